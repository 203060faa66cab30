"""``chat-sync dissector``: where the Wireshark dissector for chat_sync is installed.

The dissector is ``chatsync.lua`` in this folder, shipped as package data
(see ``setup.py``). The command prints its path and nothing else, so that
``tshark -X lua_script:$(chat-sync dissector) -r session.pcap`` works, and
so that it can be copied into Wireshark's personal Lua plugins folder
(Help > About Wireshark > Folders names it). The file's opening comment says
what it decodes and how.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

LUA_FILE = Path(__file__).with_name("chatsync.lua")


def path() -> Path:
    """The absolute path of ``chatsync.lua``."""
    return LUA_FILE.resolve()


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="chat-sync dissector",
        description="Print the path of chat_sync's Wireshark dissector (chatsync.lua), for "
                    "tshark -X lua_script:PATH or Wireshark's Lua plugins folder.",
    ).parse_args(argv)
    print(path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
