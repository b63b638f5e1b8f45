"""The gateway's TLS stream (gateway/tlsstream.py) against Python's ssl on the other side:
records cut at every boundary, every record of one read returned at once, large transfers
both ways with a sender and a receiver on each stream at the same time, close_notify, ragged
EOF, handshake and verification failures, session tickets held back, cancellation, and the
STARTTLS listeners that use it."""

from __future__ import annotations

import contextlib
import hashlib
import random
import select
import socket
import ssl
from collections.abc import Callable, Iterator

import pytest
import trio
import trio.testing
import trustme

from gateway.servers.upstream import client_context
from gateway.tls import describe_tls, server_context
from gateway.tlsstream import TLSStream, wrap_client, wrap_server

from .gateway_helpers import Running

TIMEOUT = 30


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """The listeners' context (gateway.tls.server_context) with a certificate from ``ca``."""
    folder = tmp_path_factory.mktemp("server")
    cert = ca.issue_cert("localhost", "gateway.example")
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    return server_context(folder / "cert.pem", folder / "key.pem")


@pytest.fixture(scope="module")
def client_ctx(ca_file: str) -> ssl.SSLContext:
    """The proxies' context toward upstream: the system store plus a CA file."""
    return client_context((ca_file,))


_opened: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def _socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    _opened.extend((a, b))
    return a, b


def socket_pair() -> tuple[trio.SocketStream, socket.socket]:
    """A connected pair: a trio SocketStream (for TLSStream) and the blocking stdlib socket
    behind the other end."""
    ours, theirs = _socketpair()
    theirs.settimeout(TIMEOUT)
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


def trio_pair(kind: str) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    if kind == "memory":
        return trio.testing.memory_stream_pair()
    a, b = _socketpair()
    return (
        trio.SocketStream(trio.socket.from_stdlib_socket(a)),
        trio.SocketStream(trio.socket.from_stdlib_socket(b)),
    )


class BioPeer:
    """The other end, driven by hand: an SSLObject whose records the test makes one by one
    and delivers cut wherever it likes."""

    def __init__(self, transport: trio.abc.Stream, context: ssl.SSLContext, **kw: object) -> None:
        self.transport = transport
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self.incoming, self.outgoing, **kw)  # type: ignore[arg-type]

    async def handshake(self) -> None:
        while True:
            try:
                self.ssl.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            if self.outgoing.pending:
                await self.transport.send_all(self.outgoing.read())
            if done:
                return
            self.incoming.write(await self.transport.receive_some())

    def records(self, pieces: list[bytes]) -> tuple[bytes, list[int]]:
        """Each piece as its own record: the ciphertext and the offset where each ends."""
        out, ends = b"", []
        for piece in pieces:
            self.ssl.write(piece)
            out += self.outgoing.read()
            ends.append(len(out))
        return out, ends


async def handshake_with_peer(
    kind: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[TLSStream, BioPeer]:
    """Our server stream and a BioPeer client, handshake done."""
    ours_end, peer_end = trio_pair(kind)
    ours = wrap_server(ours_end, server_ctx)
    peer = BioPeer(peer_end, client_ctx, server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ours.do_handshake)
        await peer.handshake()
    return ours, peer


# -- records, boundaries and what one receive_some returns ------------------------------------


@pytest.mark.parametrize("kind", ["memory", "socket"])
async def test_every_record_of_one_read_comes_back_in_one_call(
    kind: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with trio.fail_after(TIMEOUT):
        ours, peer = await handshake_with_peer(kind, server_ctx, client_ctx)
        # Dovecot's 4 KiB records, as many as one read of a memory stream brings (64 KiB)
        pieces = [bytes([65 + n % 26]) * 4096 for n in range(15)]
        ciphertext, _ = peer.records(pieces)
        await peer.transport.send_all(ciphertext)
        await trio.testing.wait_all_tasks_blocked()
        assert await ours.receive_some() == b"".join(pieces)  # 15 records, one call
        # max_bytes cuts it; the rest comes from what was read, without the socket.
        ciphertext, _ = peer.records(pieces)
        await peer.transport.send_all(ciphertext)
        first = await ours.receive_some(10_000)
        assert len(first) == 10_000
        rest = b""
        while len(first) + len(rest) < 15 * 4096:
            rest += await ours.receive_some(30_000)
        assert first + rest == b"".join(pieces)


async def test_records_split_at_every_boundary(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Ciphertext cut in two at every offset: after the first part, exactly the records it
    holds whole have come out, and all of them after the second."""
    with trio.fail_after(TIMEOUT):
        ours, peer = await handshake_with_peer("memory", server_ctx, client_ctx)
        pieces = [b"a", b"b" * 300, b"\r\n" * 500, b".\r\n"]
        ciphertext, ends = peer.records(pieces)
        size = len(ciphertext)
        got = bytearray()

        async def receiver() -> None:
            while True:
                data = await ours.receive_some()
                assert data  # never an empty piece while the stream is open
                got.extend(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            for cut in range(1, size):
                if cut > 1:  # the same records again, under the next sequence numbers
                    ciphertext, ends = peer.records(pieces)
                del got[:]
                await peer.transport.send_all(ciphertext[:cut])
                await trio.testing.wait_all_tasks_blocked()
                whole = sum(1 for end in ends if end <= cut)
                assert bytes(got) == b"".join(pieces[:whole]), cut
                await peer.transport.send_all(ciphertext[cut:])
                await trio.testing.wait_all_tasks_blocked()
                assert bytes(got) == b"".join(pieces), cut
            nursery.cancel_scope.cancel()


async def test_ciphertext_one_byte_at_a_time(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with trio.fail_after(TIMEOUT):
        ours, peer = await handshake_with_peer("memory", server_ctx, client_ctx)
        pieces = [b"one", b"two" * 1000, b"three"]
        ciphertext, ends = peer.records(pieces)
        got = bytearray()

        async def receiver() -> None:
            while True:
                got.extend(await ours.receive_some(7))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            for offset in range(len(ciphertext)):
                await peer.transport.send_all(ciphertext[offset : offset + 1])
                await trio.testing.wait_all_tasks_blocked()
                whole = sum(1 for end in ends if end <= offset + 1)
                assert bytes(got) == b"".join(pieces[:whole])
            nursery.cancel_scope.cancel()


# -- against Python's ssl module on real sockets -----------------------------------------------

SIZES = [1, 2, 100, 4095, 4096, 16384, 16385, 100_000, 1 << 20]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_server_side_against_stdlib_client(
    version: ssl.TLSVersion, server_ctx: ssl.SSLContext, ca_file: str
) -> None:
    ours_end, theirs = socket_pair()
    context = ssl.create_default_context(cafile=ca_file)
    context.maximum_version = version
    seen: list[bytes] = []

    def client() -> None:
        with context.wrap_socket(
            theirs, server_hostname="localhost", suppress_ragged_eofs=False
        ) as tls:
            for size in SIZES:
                payload = random.Random(size).randbytes(size)
                tls.sendall(payload)
                echoed = b""
                while len(echoed) < size:
                    echoed += tls.recv(1 << 20)
                seen.append(echoed)
            assert tls.recv(10) == b""  # our close_notify: a clean end, not SSLEOFError

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, client)
            ours = wrap_server(ours_end, server_ctx)
            await ours.do_handshake()
            assert describe_tls(ours).startswith(version.name.replace("v1_", "v1."))
            for size in SIZES:
                received = b""
                while len(received) < size:
                    received += await ours.receive_some()
                await ours.send_all(received)
            await ours.aclose()
    assert seen == [random.Random(size).randbytes(size) for size in SIZES]


async def test_client_side_against_stdlib_server(
    ca: trustme.CA, client_ctx: ssl.SSLContext
) -> None:
    """SNI, the certificate checked against the system store plus the CA file, session
    tickets read along with the data, and the server's close_notify as an end of stream."""
    ours_end, theirs = socket_pair()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("upstream.example").configure_cert(context)
    names: list[str | None] = []
    context.sni_callback = lambda _obj, name, _ctx: names.append(name)

    def server() -> None:
        with context.wrap_socket(theirs, server_side=True) as tls:
            data = b""
            while not data.endswith(b"QUIT\r\n"):
                data += tls.recv(65536)
            tls.sendall(hashlib.sha256(data).digest() * 1000)
            tls.unwrap()

    payload = b"x" * 300_000 + b"QUIT\r\n"
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, server)
            ours = wrap_client(ours_end, client_ctx, "upstream.example")
            await ours.do_handshake()
            cert = ours.getpeercert()
            assert cert is not None and ("DNS", "upstream.example") in cert["subjectAltName"]
            assert ours.getpeercert(binary_form=True)
            assert ours.version() == "TLSv1.3"
            await ours.send_all(payload)
            received = b""
            while data := await ours.receive_some():
                received += data
            assert received == hashlib.sha256(payload).digest() * 1000
            assert await ours.receive_some() == b""  # and again
            assert ours.ssl_object.session is not None
            await ours.aclose()
    assert names == ["upstream.example"]


@pytest.mark.parametrize("kind", ["memory", "socket"])
async def test_large_transfers_both_ways_at_once(
    kind: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """Each stream has a sender and a receiver task at the same time, 8 MiB each way, in
    pieces of random sizes."""
    a, b = trio_pair(kind)
    server = wrap_server(a, server_ctx)
    client = wrap_client(b, client_ctx, "localhost")
    total = 8 << 20
    digests: dict[str, str] = {}

    async def send(stream: TLSStream, seed: int) -> None:
        rng = random.Random(seed)
        sent, digest = 0, hashlib.sha256()
        while sent < total:
            piece = rng.randbytes(min(total - sent, rng.choice([1, 77, 4096, 16384, 300_000])))
            digest.update(piece)
            await stream.send_all(piece)
            sent += len(piece)
        digests[f"sent{seed}"] = digest.hexdigest()

    async def receive(stream: TLSStream, seed: int) -> None:
        got, digest = 0, hashlib.sha256()
        while got < total:
            data = await stream.receive_some()
            digest.update(data)
            got += len(data)
        digests[f"received{seed}"] = digest.hexdigest()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, server, 1)
            nursery.start_soon(receive, client, 1)
            nursery.start_soon(send, client, 2)
            nursery.start_soon(receive, server, 2)
    assert digests["sent1"] == digests["received1"]
    assert digests["sent2"] == digests["received2"]


# -- ends of stream ---------------------------------------------------------------------------


async def test_peer_close_notify_is_end_of_stream(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with trio.fail_after(TIMEOUT):
        ours, peer = await handshake_with_peer("memory", server_ctx, client_ctx)
        peer.ssl.write(b"last")
        with contextlib.suppress(ssl.SSLWantReadError):
            peer.ssl.unwrap()  # its close_notify; it does not wait for ours
        await peer.transport.send_all(peer.outgoing.read())
        assert await ours.receive_some() == b"last"
        assert await ours.receive_some() == b""
        assert await ours.receive_some() == b""
        await ours.send_all(b"still allowed: only the peer's half is closed")


@pytest.mark.parametrize("kind", ["memory", "socket"])
async def test_ragged_eof_after_data(
    kind: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """A close without close_notify: what came before it first, then an error (a truncation
    must not look like the end of a message)."""
    with trio.fail_after(TIMEOUT):
        ours, peer = await handshake_with_peer(kind, server_ctx, client_ctx)
        ciphertext, _ = peer.records([b"partial mess"])
        await peer.transport.send_all(ciphertext)
        await peer.transport.aclose()
        assert await ours.receive_some() == b"partial mess"
        with pytest.raises(trio.BrokenResourceError) as caught:
            await ours.receive_some()
        assert isinstance(caught.value.__cause__, ssl.SSLEOFError)
        with pytest.raises(trio.BrokenResourceError):
            await ours.send_all(b"x")
        await ours.aclose()


async def test_corrupt_record_after_data_is_raised_by_the_next_call(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with trio.fail_after(TIMEOUT):
        ours, peer = await handshake_with_peer("memory", server_ctx, client_ctx)
        good, _ = peer.records([b"good"])
        bad, _ = peer.records([b"tampered"])
        await peer.transport.send_all(good + bad[:-1] + bytes([bad[-1] ^ 1]))
        assert await ours.receive_some() == b"good"
        with pytest.raises(trio.BrokenResourceError) as caught:
            await ours.receive_some()
        assert isinstance(caught.value.__cause__, ssl.SSLError)


async def test_truncated_handshake_is_broken(server_ctx: ssl.SSLContext) -> None:
    ours_end, theirs = trio_pair("memory")
    ours = wrap_server(ours_end, server_ctx)
    with trio.fail_after(TIMEOUT):
        await theirs.send_all(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello
        await theirs.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await ours.do_handshake()


# -- handshake failures ------------------------------------------------------------------------


async def test_cleartext_instead_of_a_handshake(server_ctx: ssl.SSLContext) -> None:
    """What a client that pipelined a command after STARTTLS sends the TLS layer."""
    ours_end, theirs = socket_pair()
    theirs.sendall(b"EHLO client.example\r\n")
    with trio.fail_after(TIMEOUT):
        ours = wrap_server(ours_end, server_ctx)
        with pytest.raises(trio.BrokenResourceError) as caught:
            await ours.do_handshake()
        assert isinstance(caught.value.__cause__, ssl.SSLError)
        with pytest.raises(trio.BrokenResourceError):
            await ours.receive_some()
        await ours.aclose()


async def test_no_common_suite(server_ctx: ssl.SSLContext, ca_file: str) -> None:
    ours_end, theirs = socket_pair()
    context = ssl.create_default_context(cafile=ca_file)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256")  # CBC only

    def client() -> None:
        with pytest.raises((ssl.SSLError, OSError)):
            context.wrap_socket(theirs, server_hostname="localhost")

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, client)
            ours = wrap_server(ours_end, server_ctx)
            with pytest.raises(trio.BrokenResourceError):
                await ours.do_handshake()
            await ours.aclose()


@pytest.mark.parametrize(
    ("context_of", "name"),
    [
        (lambda ca_file: client_context(), "localhost"),  # the system store alone
        (lambda ca_file: client_context((ca_file,)), "other.example"),  # trusted, wrong name
    ],
)
async def test_client_refuses_a_certificate_it_cannot_verify(
    context_of: Callable[[str], ssl.SSLContext],
    name: str,
    server_ctx: ssl.SSLContext,
    ca_file: str,
) -> None:
    a, b = trio_pair("socket")
    server = wrap_server(a, server_ctx)
    client = wrap_client(b, context_of(ca_file), name)

    async def serve() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(trio.BrokenResourceError) as caught:
                await client.do_handshake()
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
            await client.aclose()  # the server sees the end of the connection


# -- the rest of the contract ------------------------------------------------------------------


async def test_session_tickets_wait_for_the_first_write(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """A TLS 1.3 server's tickets go with its first write, not right after the handshake."""
    a, theirs = _socketpair()
    ours = wrap_server(trio.SocketStream(trio.socket.from_stdlib_socket(a)), server_ctx)
    peer = BioPeer(
        trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
        client_ctx,
        server_hostname="localhost",
    )
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.do_handshake)
            await peer.handshake()
        assert ours.version() == "TLSv1.3"
        assert select.select([theirs], [], [], 0)[0] == []
        await ours.send_all(b"220 ready\r\n")
        plaintext = b""
        while not plaintext:
            peer.incoming.write(await peer.transport.receive_some())
            try:
                plaintext = peer.ssl.read(1000)
            except ssl.SSLWantReadError:
                continue
        assert plaintext == b"220 ready\r\n"
        assert peer.ssl.session is not None and peer.ssl.session.has_ticket


async def test_one_receiver_and_one_sender_at_a_time(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    with trio.fail_after(TIMEOUT):
        ours, _peer = await handshake_with_peer("memory", server_ctx, client_ctx)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await ours.receive_some()
            nursery.cancel_scope.cancel()


async def test_cancelled_receive_loses_nothing(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(TIMEOUT):
        ours, peer = await handshake_with_peer("socket", server_ctx, client_ctx)
        with trio.move_on_after(5):
            await ours.receive_some()  # nothing comes: cancelled while waiting
        ciphertext, _ = peer.records([b"one", b"two"])
        await peer.transport.send_all(ciphertext)
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await ours.receive_some()  # cancelled before it takes anything
        assert scope.cancelled_caught
        assert await ours.receive_some() == b"onetwo"
        await ours.send_all(b"the stream is still good")


async def test_aclose_without_handshake_and_twice(server_ctx: ssl.SSLContext) -> None:
    ours_end, _theirs = trio_pair("socket")
    ours = wrap_server(ours_end, server_ctx)
    with pytest.raises(trio.NeedHandshakeError):
        ours.cipher()
    await ours.aclose()
    await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await ours.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await ours.send_all(b"x")


# -- the listeners that use it: what a client pipelines after STARTTLS is never read ----------


def _reply(sock: ssl.SSLSocket | socket.socket) -> bytes:
    """One reply: a POP3 status line, or an SMTP reply up to its last line ("250 ...")."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        last = data.rsplit(b"\r\n", 2)[-2:]
        if data.endswith(b"\r\n") and last[0][3:4] != b"-":
            return data


@pytest.fixture
def plain_client(running: Running) -> Iterator[Callable[[str], socket.socket]]:
    opened: list[socket.socket] = []

    def connect(listener: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", running.ports[listener]), timeout=TIMEOUT)
        opened.append(sock)
        return sock

    yield connect
    for sock in opened:
        sock.close()


async def test_smtp_starttls_ignores_pipelined_cleartext(
    running: Running, plain_client: Callable[[str], socket.socket]
) -> None:
    def session() -> bytes:
        sock = plain_client("smtp")
        _reply(sock)
        sock.sendall(b"EHLO client.example\r\n")
        assert b"STARTTLS" in _reply(sock)
        sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
        assert _reply(sock).startswith(b"220 ")
        with running.context().wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(b"MAIL FROM:<a@example.com>\r\n")
            return _reply(tls)

    reply = await trio.to_thread.run_sync(session)
    assert reply.startswith(b"503 ")  # no EHLO yet in the TLS session: the MAIL was not kept


async def test_pop3_stls_ignores_pipelined_cleartext(
    running: Running, plain_client: Callable[[str], socket.socket]
) -> None:
    def session() -> bytes:
        sock = plain_client("pop3")
        _reply(sock)
        sock.sendall(b"STLS\r\nUSER injected\r\n")
        assert _reply(sock).startswith(b"+OK")
        with running.context().wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(b"PASS secret\r\n")
            return _reply(tls)

    reply = await trio.to_thread.run_sync(session)
    assert reply.startswith(b"-ERR")  # PASS without USER: the cleartext USER was dropped
