"""TLS end to end: the handshake inside the selectors loop, and the clients that get it wrong.

Certificates are made at test time by ``trustme``: a throwaway CA, and a
server certificate it signs for 127.0.0.1 and localhost. Every test runs a
real server on 127.0.0.1 port 0 with a pair of TLS clients chatting
through it, and checks that the pair lost nothing while the misbehaving
peer was dealt with.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers import LineClient, StreamLines, request_line

from chat_sync import tcp_server, tls
from chat_sync.config import TcpClientConfig
from chat_sync.serving import ServerHandle
from chat_sync.tcp_client import ChatClient, ClientEvent, Received
from chat_sync.tcp_server import serve

pytestmark = pytest.mark.timeout(20)

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Certs:
    ca: str             # the CA certificate clients trust
    chain: str          # the server's certificate chain and key, one PEM file
    cert: str           # ... or the chain alone
    key: str            # ... and the key alone
    other_ca: str       # a CA that signed nothing here
    elsewhere: str      # a chain and key from the right CA, for another host name


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    where = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: str(where / f"{name}.pem") for name in Certs.__dataclass_fields__}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_and_cert_chain_pem.write_to_path(paths["chain"])
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["cert"], append=True)
    server.private_key_pem.write_to_path(paths["key"])
    trustme.CA().cert_pem.write_to_path(paths["other_ca"])
    ca.issue_cert("chat.example.org").private_key_and_cert_chain_pem.write_to_path(
        paths["elsewhere"])
    return Certs(**paths)


def tls_client(server: ServerHandle, certs: Certs, user: str, **config: Any) -> ChatClient:
    client = ChatClient(TcpClientConfig(port=server.port, user=user, tls=True,
                                        cafile=certs.ca, **config))
    client.connect()
    return client


def chat_messages(client: ChatClient, count: int, timeout: float = 5.0) -> list[str]:
    """The texts of the next ``count`` chat messages ``client`` receives."""
    texts: list[str] = []
    deadline = time.monotonic() + timeout
    while len(texts) < count:
        event: ClientEvent = client.next_event(max(0.0, deadline - time.monotonic()))
        if isinstance(event, Received) and event.message.get("type") == "message":
            texts.append(event.message["text"])
    return texts


class TlsPair:
    """alice and bob chatting over TLS; bob must hear every word of alice's."""

    def __init__(self, server: ServerHandle, certs: Certs) -> None:
        self.alice = tls_client(server, certs, "alice")
        self.bob = tls_client(server, certs, "bob")
        self.said: list[str] = []

    def say(self, count: int) -> None:
        for _ in range(count):
            text = f"tls line {len(self.said)}"
            self.alice.send_line(text)
            self.said.append(text)

    def check(self) -> None:
        assert chat_messages(self.bob, len(self.said)) == self.said

    def close(self) -> None:
        assert self.alice.close() == 0 and self.bob.close() == 0


class TlsLineClient(LineClient):
    """helpers.LineClient over TLS: raw lines, a timeout on every read."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *,
                 rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        raw = socket.socket()
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect((host, port))
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self._buffer = bytearray()
        self.eof = False


def test_two_clients_chat_over_tls(certs: Certs) -> None:
    with serve(port=0, tls_cert=certs.cert, tls_key=certs.key) as server:
        pair = TlsPair(server, certs)
        try:
            pair.say(20)
            pair.check()                                  # 20 of 20
            pair.bob.send_line("/msg alice psst")
            whisper = next(e for e in iter_events(pair.alice)
                           if isinstance(e, Received) and e.message["type"] == "whisper")
            assert isinstance(whisper, Received) and whisper.message["text"] == "psst"
        finally:
            pair.close()


def test_plain_text_on_the_tls_port_gets_tls_required_and_the_pair_chats_on(
        certs: Certs) -> None:
    with serve(port=0, tls_cert=certs.chain, tls_handshake_timeout_s=0.3) as server:
        pair = TlsPair(server, certs)
        try:
            pair.say(5)
            # A client that speaks first, in plain text: refused at its first byte.
            with LineClient(server.host, server.port) as plain:
                plain.send(type="join", room="lobby", user="plain")
                rest = plain.recv_until_closed()
            assert [(m["type"], m["code"]) for m in rest] == [("error", "tls_required")]
            # Our own client without --tls waits for a welcome: refused at the deadline.
            client = ChatClient(TcpClientConfig(port=server.port, user="carol"))
            with pytest.raises(ConnectionError):
                client.connect()
            shown = client.next_event(timeout=1.0)
            assert isinstance(shown, Received) and shown.message["code"] == "tls_required"
            pair.say(5)
            pair.check()                                  # 10 of 10
        finally:
            pair.close()


def test_stalled_and_broken_handshakes_are_closed_while_the_pair_chats(certs: Certs) -> None:
    deadline_s = 0.3
    with serve(port=0, tls_cert=certs.chain, tls_handshake_timeout_s=deadline_s) as server:
        pair = TlsPair(server, certs)
        address = (server.host, server.port)
        try:
            started = time.monotonic()
            # Half a ClientHello: the record header promises 512 bytes; 5 come.
            stalled = socket.create_connection(address, timeout=5)
            stalled.sendall(b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03")
            # A TLS record type, then garbage: the handshake fails at once.
            broken = socket.create_connection(address, timeout=5)
            broken.sendall(b"\x16\x03\x01\x00\x10" + os.urandom(16) + b"\x16" * 300)
            pair.say(10)
            with broken:
                said = read_to_eof(broken)                 # closed; at most a TLS alert
                assert said == b"" or said[0] == 0x15, said
            with stalled:
                assert read_to_eof(stalled) == b""
            assert time.monotonic() - started >= deadline_s
            pair.say(10)
            pair.check()                                  # 20 of 20
            assert len(server.server.conns) == 2
        finally:
            pair.close()


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_decrypted_bytes_beyond_one_recv_are_read_without_waiting(
        certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    """One TLS record holds five requests; the server reads 64 bytes at a time.

    The rest of the record waits inside OpenSSL, where select() cannot see
    it: only ``pending()`` says it is there. Nothing else arrives to wake the
    loop, so without that check the later requests would never be answered.
    """
    monkeypatch.setattr(tcp_server, "RECV_BYTES", 64)
    with serve(port=0, tls_cert=certs.chain) as server, \
            TlsLineClient(server.host, server.port, tls.client_context(certs.ca)) as client:
        assert client.recv_message()["type"] == "welcome"
        client.send_raw(b"".join(request_line(type="ping", id=f"ping number {i}") + b"\n"
                                 for i in range(5)))        # one sendall: one record
        assert [client.recv_message(timeout=2.0)["id"] for _ in range(5)] == [
            f"ping number {i}" for i in range(5)]


def test_a_tls_reader_that_falls_behind_gets_every_byte_in_order(certs: Certs) -> None:
    """Output queued for a TLS peer is joined, sent, retried after want-write."""
    with serve(port=0, tls_cert=certs.chain, send_buffer_soft_bytes=8 * 1024 * 1024,
               max_send_buffer_bytes=16 * 1024 * 1024) as server:
        pair = TlsPair(server, certs)
        context = tls.client_context(certs.ca)
        try:
            with TlsLineClient(server.host, server.port, context, rcvbuf=4096) as behind:
                assert behind.recv_message()["type"] == "welcome"
                behind.send(type="join", room="lobby", user="behind")
                behind.recv_until(lambda m: m.get("user") == "behind")
                conn = next(c for c in server.server.conns.values()
                            if c.peer == "%s:%d" % behind.sock.getsockname()[:2])
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                big = "y" * 3990
                for n in range(30):                         # ~120 KB while it does not read
                    pair.alice.send_line(f"{n:5d} {big}")
                    pair.said.append(f"{n:5d} {big}")
                pair.check()                                # bob: 30 of 30 meanwhile
                heard = [m["text"] for m in behind.recv_until(
                    lambda m: m.get("text") == pair.said[-1], timeout=10.0)
                    if m["type"] == "message"]
                assert heard == pair.said                   # behind: 30 of 30, in order
        finally:
            pair.close()


# -- the command line ------------------------------------------------------------------

def run_client(*args: str, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "chat_sync.tcp_client", "--plain",
                           "--port", str(port), "--user", "dave", *args],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=15)


@pytest.mark.parametrize("which, says", [
    ("other_ca", "unable to get local issuer certificate (--cafile names the CA to trust)"),
    ("wrong_host", "mismatch, certificate is not valid for '127.0.0.1'. (--host must be"),
])
def test_a_certificate_the_client_cannot_trust_exits_2_saying_why(
        certs: Certs, which: str, says: str) -> None:
    chain = certs.elsewhere if which == "wrong_host" else certs.chain
    cafile = certs.other_ca if which == "other_ca" else certs.ca
    with serve(port=0, tls_cert=chain) as server:
        pair = TlsPair(server, certs) if which == "other_ca" else None
        try:
            done = run_client("--tls", "--cafile", cafile, port=server.port)
            assert done.returncode == 2
            assert "TLS certificate check failed" in done.stderr and says in done.stderr
            assert "Traceback" not in done.stderr
            if pair is not None:
                pair.say(3)
                pair.check()
        finally:
            if pair is not None:
                pair.close()


def test_an_unreadable_cafile_exits_2(tmp_path: Path) -> None:
    done = run_client("--tls", "--cafile", str(tmp_path / "missing.pem"), port=9)
    assert done.returncode == 2
    assert "cannot use --cafile" in done.stderr and "Traceback" not in done.stderr


def test_the_server_serves_tls_from_its_flags(certs: Certs) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0",
                             "--tls-cert", certs.cert, "--tls-key", certs.key],
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = StreamLines(proc.stdout).readline(timeout=10)
        assert line is not None and line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with TlsLineClient("127.0.0.1", port, tls.client_context(certs.ca)) as client:
            assert client.recv_message()["type"] == "welcome"
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("flags, code, says", [
    (["--tls-cert", "/no/such/cert.pem"], 1, "cannot read TLS file /no/such/cert.pem"),
    (["--tls-key", "key.pem"], 2, "tls_key is set but tls_cert is not"),
])
def test_bad_tls_flags_exit_with_a_message(flags: list[str], code: int, says: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0", *flags],
                          cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=15)
    assert done.returncode == code
    assert says in done.stderr and "Traceback" not in done.stderr
    assert "listening" not in done.stdout


def test_a_certificate_that_is_not_pem_exits_1(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "chat_sync.tcp_server", "--port", "0",
                           "--tls-cert", str(bogus)], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
    assert done.returncode == 1
    assert f"cannot use TLS certificate {bogus}" in done.stderr
    assert "Traceback" not in done.stderr


def iter_events(client: ChatClient) -> Iterator[ClientEvent]:
    while True:
        yield client.next_event()


# -- The README's recipe, as a newcomer follows it --------------------------------------------
def readme_tls_blocks() -> list[str]:
    """The ``sh`` blocks of the README's TLS section, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## TLS\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README has no TLS section"
    return re.findall(r"```sh\n(.*?)```", match.group(1), re.S)


def as_subprocess(command: str, *extra: str) -> list[str]:
    """A README ``chat-sync ...`` command as argv for this interpreter and this tree."""
    words = shlex.split(command)
    assert words[0] == "chat-sync", command
    return [sys.executable, "-m", "chat_sync", *words[1:], *extra]


@pytest.mark.timeout(90)
def test_the_readme_recipes_make_the_files_its_commands_use_and_a_line_goes_through(
        tmp_path: Path) -> None:
    """Each certificate recipe, run as pasted in an empty directory, then the two commands."""
    blocks = readme_tls_blocks()
    recipes = [block for block in blocks if "chat-sync" not in block]
    server_command = next(b for b in blocks if b.startswith("chat-sync tcp-server")).strip()
    client_command = next(b for b in blocks if b.startswith("chat-sync tcp-client")).strip()
    assert len(recipes) >= 2, "the TLS section should say how to make the certificate files"
    for number, recipe in enumerate(recipes):
        tool = shlex.split(recipe)[0]
        if tool != "python3" and shutil.which(tool) is None:
            continue                              # openssl missing: the trustme recipe is for that
        where = tmp_path / f"recipe{number}"
        where.mkdir()
        made = subprocess.run(["bash", "-euc", recipe.replace("python3 ", f"{sys.executable} ")],
                              cwd=where, capture_output=True, text=True, timeout=30)
        assert made.returncode == 0, made.stderr
        assert {"server.pem", "server-key.pem", "ca.pem"} <= {p.name for p in where.iterdir()}
        chat_over_tls(where, server_command, client_command)


def chat_over_tls(where: Path, server_command: str, client_command: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(as_subprocess(server_command, "--port", "0"), cwd=where, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    client: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        line = StreamLines(server.stdout).readline(timeout=15)
        assert line is not None and line.startswith("listening on 127.0.0.1:"), line
        port = line.rsplit(":", 1)[1].strip()
        client = subprocess.Popen(as_subprocess(client_command, "--port", port, "--plain"),
                                  cwd=where, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("hello over tls\n")
        client.stdin.flush()
        StreamLines(client.stdout).wait_for_line(lambda seen: "alice: hello over tls" in seen,
                                                 timeout=15)
        client.stdin.close()
        assert client.wait(timeout=15) == 0
        server.terminate()
        assert server.wait(timeout=15) == 0
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.kill()
                proc.wait()
