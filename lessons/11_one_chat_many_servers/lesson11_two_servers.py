"""Lesson 11: two chat servers, one chat, through a Redis of this program's own.

Starts ``redis-server`` on a free port (with no persistence, in a temporary
folder), two chat_sync TCP servers on it, alice on the first and bob on the
second; they chat, bob whispers, and bob's server is stopped while carol on
the first watches. Prints what each client received. Needs ``redis-server``
(Debian: ``apt-get install redis-server``) and ``pip install '.[bus]'``.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from chat_sync.tcp_server import serve

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def start_redis(folder: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", HOST,
                              "--save", "", "--appendonly", "no", "--dir", folder],
                             stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:                      # ready when it accepts a connection
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return redis, f"redis://{HOST}:{port}/0"
        except OSError:
            if time.monotonic() > deadline or redis.poll() is not None:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)


class Client:
    """A line client that prints what it receives as NAME <- TYPE fields."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.reader = self.sock.makefile("rb")
        self.next()                  # the welcome

    def send(self, **request: Any) -> None:
        self.sock.sendall(json.dumps(request).encode() + b"\n")

    def next(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.reader.readline())
        return message

    def until(self, text: str) -> None:
        """Print messages up to the one whose text is ``text``."""
        while True:
            m = self.next()
            shown = m.get("text", "")
            seq = f" (seq {m['seq']})" if "seq" in m else ""
            print(f"{self.name} <- {m['type']}: {shown}{seq}")
            if shown == text:
                return


def main() -> int:
    if shutil.which("redis-server") is None:
        print("this lesson needs redis-server: apt-get install redis-server", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as folder:
        redis, url = start_redis(folder)
        try:
            with serve(port=0, bus_url=url) as one, serve(port=0, bus_url=url) as two:
                alice, bob = Client("alice", one.port), Client("bob", two.port)
                alice.send(type="join", room="lobby", user="alice")
                alice.until("alice joined")
                bob.send(type="join", room="lobby", user="bob")
                bob.until("bob joined")          # the history from server one first
                alice.until("bob joined")
                bob.send(type="message", text="hello from the other server")
                alice.until("hello from the other server")
                bob.send(type="whisper", to="alice", text="psst")
                alice.until("psst")
                carol = Client("carol", one.port)
                carol.send(type="join", room="lobby", user="carol", since=2)
                carol.until("carol joined")
                two.stop()                        # a graceful stop says "gone" for itself
                carol.until("bob left")
        finally:
            redis.kill()
            redis.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
