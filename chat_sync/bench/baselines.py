"""What chat_sync is measured against: a relay that only copies bytes, and the asyncio design.

- ``raw_relay``: a selectors loop that forwards every complete line to every
  client, with no parsing, rooms or log: the floor for one Python thread
  moving these bytes.
- ``asyncio_chat``: the same protocol served the way an asyncio tutorial
  would, one coroutine per connection reading lines and ``write`` to every
  member, around the very ``ChatCore`` chat_sync uses. Only the I/O design
  differs, so the comparison is of the loops. It has no chat log, no guard
  and no output limits, which flatters it (chat_sync is measured with its
  log on).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import selectors
import signal
import socket
import time

from .. import protocol as p
from ..rooms import ChatCore, ConnId, Output, Reply
from ..wakeup import Wakeup
from .measure import RECV_BYTES

SERVERS = {          # design -> the ``python -m chat_sync.bench`` command that serves it
    "raw": "raw-relay",
    "asyncio": "asyncio-chat",
}


def raw_relay(host: str, port: int) -> None:
    """Forward every complete line to every client; no parsing, no rooms, no log.

    The same loop shape as ``tcp_server`` (read, then one flush per dirty
    socket per turn) with everything else taken out.
    """
    listener = socket.create_server((host, port), backlog=1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    wakeup = Wakeup()
    selector.register(wakeup.reader, selectors.EVENT_READ, "wakeup")
    signal.signal(signal.SIGTERM, lambda *_: wakeup.wake())
    print(f"listening on {host}:{listener.getsockname()[1]}", flush=True)
    inbufs: dict[socket.socket, bytearray] = {}
    outbufs: dict[socket.socket, bytearray] = {}
    writing: set[socket.socket] = set()
    while True:
        dirty: set[socket.socket] = set()
        for key, mask in selector.select():
            if key.data == "wakeup":
                return
            if key.data is None:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(conn, selectors.EVENT_READ, "client")
                inbufs[conn], outbufs[conn] = bytearray(), bytearray()
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if mask & selectors.EVENT_WRITE:
                dirty.add(sock)
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(RECV_BYTES)
                except ConnectionError:         # an RST: the generator closing with input unread
                    data = b""
                if not data:
                    selector.unregister(sock)
                    sock.close()
                    del inbufs[sock], outbufs[sock]
                    writing.discard(sock)
                    continue
                inbuf = inbufs[sock]
                inbuf += data
                end = inbuf.rfind(b"\n")
                if end >= 0:
                    lines = bytes(inbuf[:end + 1])
                    del inbuf[:end + 1]
                    for other, outbuf in outbufs.items():
                        outbuf += lines
                        dirty.add(other)
        for sock in dirty:
            if sock not in outbufs:
                continue
            outbuf = outbufs[sock]
            try:
                del outbuf[:sock.send(outbuf)]
            except BlockingIOError:
                pass
            except ConnectionError:             # gone: its next read says so and closes it
                outbuf.clear()
            want = bool(outbuf)
            if want != (sock in writing):
                selector.modify(sock, selectors.EVENT_READ |
                                (selectors.EVENT_WRITE if want else 0), "client")
                (writing.add if want else writing.discard)(sock)


# -- the asyncio design ------------------------------------------------------------------
def asyncio_chat(host: str, port: int) -> None:
    """Serve the chat protocol with asyncio streams around ``ChatCore`` until SIGTERM."""
    asyncio.run(_asyncio_chat(host, port))


async def _asyncio_chat(host: str, port: int) -> None:
    core = ChatCore()
    writers: dict[ConnId, asyncio.StreamWriter] = {}
    ids = itertools.count(1)

    def deliver(outputs: list[Output]) -> None:
        for output in outputs:
            line = p.encode(output.message)
            targets = (output.to,) if isinstance(output, Reply) else output.to
            sender, rid = (None, None) if isinstance(output, Reply) or output.own is None \
                else output.own
            for conn in targets:
                writer = writers.get(conn)
                if writer is not None and not writer.is_closing():
                    writer.write(p.with_id(line, rid) if conn == sender else line)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(ids)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writers[conn] = writer
        deliver(core.connect(conn))
        try:
            while line := await reader.readline():
                deliver(core.receive(conn, line.rstrip(b"\n"), time.time()))
                await writer.drain()
        except (ConnectionError, ValueError):   # ValueError: a line over the reader's limit
            pass
        finally:
            del writers[conn]
            deliver(core.disconnect(conn, time.time()))
            writer.close()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Clients that go mid-write are ordinary at the end of a run: no traceback for them.
    loop.set_exception_handler(lambda loop, context: None)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    server = await asyncio.start_server(connection, host, port, backlog=1024,
                                        limit=p.MAX_LINE_BYTES + 1)
    print(f"listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()
