"""Lesson 01: a blocking TCP echo server, one client at a time.

    python lessons/01_sockets/lesson01_echo_server.py --port 0

It prints ``listening on HOST:PORT`` and sends every byte a client sends
straight back, until the client closes. Ctrl-C (or SIGTERM) stops it.

Blocking calls make the code read top to bottom, and that is its limit:
while ``serve_client`` waits in ``recv`` for one client, nobody else is
served. Lesson 03 serves many clients from one thread.
"""
from __future__ import annotations

import argparse
import signal
import socket

RECV_BYTES = 4096


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 asks the kernel for any free port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Without this, restarting the server fails with "Address already in use"
    # while the old connections' TIME_WAIT lasts (a minute or so).
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen()
    return listener


def serve_client(listener: socket.socket) -> None:
    """Accept one client and echo its bytes until it closes its side."""
    sock, address = listener.accept()
    print(f"client {address[0]}:{address[1]} connected", flush=True)
    with sock:
        try:
            while True:
                data = sock.recv(RECV_BYTES)    # whatever has arrived: 1 to RECV_BYTES bytes
                if not data:                    # b"": the client closed; nothing more comes
                    break
                sock.sendall(data)              # send() may take only part; sendall() loops
        except ConnectionError as exc:          # reset, broken pipe: the client vanished
            print(f"client {address[0]}:{address[1]}: {exc}", flush=True)
    print(f"client {address[0]}:{address[1]} left", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A blocking TCP echo server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7000, help="0 picks any free port")
    args = parser.parse_args(argv)
    # SIGTERM stops the server the way Ctrl-C does: KeyboardInterrupt.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with listen(args.host, args.port) as listener:
        host, port = listener.getsockname()     # the real port, when we asked for 0
        print(f"listening on {host}:{port}", flush=True)
        try:
            while True:
                serve_client(listener)
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
