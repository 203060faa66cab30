"""TLS for the TCP chat: the contexts, and the handshake as one non-blocking step.

Theory of operation
-------------------
TLS sits between the socket and the lines: ``ssl.SSLSocket`` encrypts what
``send`` is given and decrypts what ``recv`` returns. In a blocking program
that is all; in a ``selectors`` loop four things change, and the server's
shell (``tcp_server``) handles each:

1. **The handshake is a state.** Before any line flows, client and server
   exchange a few messages. The socket is wrapped with
   ``do_handshake_on_connect=False`` and ``handshake_step`` is called each
   time the socket is ready, until it says ``DONE``. Until then the
   connection is in a handshake phase with a deadline, so a peer that
   connects and sends nothing (or garbage) holds a slot for a bounded time,
   and never blocks the loop.
2. **Want-read, want-write.** A step that cannot go on raises
   ``SSLWantReadError`` or ``SSLWantWriteError``: OpenSSL says which event
   it waits for, and it may be the one you would not expect (a handshake
   that wants to *write* its reply). Register for exactly that event.
3. **Decrypted bytes select() cannot see.** A TLS record may hold more than
   one ``recv`` takes; the rest waits inside OpenSSL, not in the kernel, so
   the socket does not look readable. After each read, ``pending()`` says
   whether to read again without waiting.
4. **No sendmsg.** ``SSLSocket.sendmsg`` raises: TLS encrypts one buffer at
   a time. The queued chunks are joined into one buffer first; and after
   ``SSLWantWriteError`` OpenSSL requires the *same* buffer to be offered
   again, so the joined buffer stays at the head of the queue until sent.

Only TLS 1.3 is offered: it has no renegotiation, so sending never has to
wait for a read, and every Python since 3.7 with OpenSSL 1.1.1 speaks it.

A plain-text client on a TLS port would hang in the handshake, waiting for
a welcome that never comes. The first byte a TLS client sends is always
0x16 (a handshake record); the server peeks at it before wrapping, and a
connection that starts with anything else gets a plain-text
``tls_required`` error, as HTTPS servers answer plain HTTP with a 400.
"""
from __future__ import annotations

import enum
import selectors
import socket
import ssl

HANDSHAKE_RECORD = 0x16      # the first byte of every TLS ClientHello


def server_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    """A server context for the certificate chain ``cert`` and its ``key``.

    ``key`` None: the key is in the ``cert`` file. Raises OSError if a file
    cannot be read, ssl.SSLError if it is not a matching PEM certificate and key.
    """
    for path in (cert, key):
        if path is not None:
            with open(path, "rb"):      # an OSError naming the file; load_cert_chain's does not
                pass
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(cert, key)
    return context


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A client context that checks the server's certificate and host name.

    ``cafile`` None: trust the system's CAs. Raises OSError or ssl.SSLError
    if ``cafile`` cannot be read or holds no certificate.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def looks_like_tls(first: bytes) -> bool:
    """Whether a connection's first byte can begin a TLS handshake."""
    return bool(first) and first[0] == HANDSHAKE_RECORD


def peek_hello(sock: socket.socket) -> bytes | str | None:
    """Peek at a new connection's first byte, without taking it.

    Returns the byte; None if nothing has come yet; or, as a ``str``, why
    the connection is over (closed, or the receive failed).
    """
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except OSError as exc:
        return f"receive failed: {exc}"
    return first if first else "closed by peer"


class Step(enum.Enum):
    """What one handshake step needs next."""

    DONE = "done"
    WANT_READ = "want_read"      # register for EVENT_READ and step again when readable
    WANT_WRITE = "want_write"    # register for EVENT_WRITE and step again when writable


def handshake_step(sock: ssl.SSLSocket) -> Step:
    """Advance a non-blocking handshake as far as the socket allows.

    Returns DONE once the handshake has finished. Raises ssl.SSLError (not
    TLS, a bad certificate, a protocol error) or OSError (a reset) if it failed.
    """
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return Step.WANT_READ
    except ssl.SSLWantWriteError:
        return Step.WANT_WRITE
    return Step.DONE


def wait(sock: socket.socket, *, readable: bool, timeout: float | None) -> bool:
    """Block until ``sock`` is readable (or writable); False on timeout.

    For the client's non-blocking TLS socket; a selector, not ``select.select``,
    so a process with more than 1024 descriptors works too.
    """
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ if readable else selectors.EVENT_WRITE)
        return bool(selector.select(timeout))
