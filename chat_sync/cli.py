"""The ``chat-sync`` command: one subcommand per program, each the module's own ``main``.

``chat-sync tcp-server --port 0`` is exactly ``python -m chat_sync.tcp_server --port 0``;
this module only picks the program, so each keeps its own flags and ``--help``.
"""
from __future__ import annotations

import importlib
import sys

from . import __version__

# subcommand -> (module, one-line summary)
PROGRAMS: dict[str, tuple[str, str]] = {
    "tcp-server": ("chat_sync.tcp_server", "run the TCP chat server"),
    "tcp-client": ("chat_sync.tcp_client", "chat over TCP from this terminal"),
    "udp-server": ("chat_sync.udp_server", "run the UDP chat server"),
    "udp-client": ("chat_sync.udp_client", "chat over UDP from this terminal"),
    "bench": ("chat_sync.bench", "benchmarks that verify what they measure"),
    "course": ("chat_sync.course", "copy the lesson exercises into a workspace of your own"),
    "check": ("chat_sync.check", "check that a server keeps the protocol's promises"),
    "record": ("chat_sync.record", "relay between clients and a server, printing the wire"),
    "dissector": ("chat_sync.dissector", "print the path of the Wireshark dissector"),
}


def usage() -> str:
    lines = ["usage: chat-sync COMMAND [ARGS...]", "", "commands:"]
    for name, (_, summary) in PROGRAMS.items():
        lines.append(f"  {name:<12} {summary}")
    lines += ["", "'chat-sync COMMAND --help' shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if args[0] == "--version":
        print(f"chat-sync {__version__}")
        return 0
    program = PROGRAMS.get(args[0])
    if program is None:
        print(f"chat-sync: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(program[0])
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
