"""The POP3 proxy streams a RETR response: the client gets the start of a message while the
upstream still holds the rest back, and the copy is stored whole, keyed by its UIDL
(SPEC.md 15.3).

The upstream is a scripted POP3S server of the test's (trustme certificate) that sends the
first half of a 400 KiB message, then waits until the test's client has read part of it.
A proxy that waited for the whole message would never let it go on: the test would time out.
"""

from __future__ import annotations

import ssl
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio
import trustme

from gateway.config import ProxyConfig
from gateway.servers import pop3_proxy
from gateway.servers.gateway import Gateway, Listening

from .gateway_helpers import make_config, stored_bodies

LINE = b"0123456789" * 7 + b"abcd\r\n"
MESSAGE = b"Subject: big\r\n\r\n" + LINE * 5400  # about 400 KiB
HALF = len(MESSAGE) // 2


async def scripted_upstream(
    stream: trio.SocketStream, context: ssl.SSLContext, release: trio.Event, seen: list[bytes]
) -> None:
    io = trio.SSLStream(stream, context, server_side=True)
    await io.do_handshake()
    await io.send_all(b"+OK scripted\r\n")
    buffer = b""
    while True:
        while b"\r\n" not in buffer:
            data = await io.receive_some(4096)
            if not data:
                return
            buffer += data
        line, buffer = buffer.split(b"\r\n", 1)
        seen.append(line)
        verb = line.split(b" ")[0].upper()
        if line.upper() == b"UIDL":
            await io.send_all(b"+OK\r\n1 big-one\r\n.\r\n")
        elif line.upper() == b"UIDL 1":
            await io.send_all(b"+OK 1 big-one\r\n")
        elif verb == b"RETR":
            await io.send_all(b"+OK %d octets\r\n" % len(MESSAGE) + MESSAGE[:HALF])
            await release.wait()
            await io.send_all(MESSAGE[HALF:] + b".\r\n")
        elif verb == b"QUIT":
            await io.send_all(b"+OK bye\r\n")
            await io.aclose()
            return
        else:  # USER, PASS, NOOP
            await io.send_all(b"+OK\r\n")


@pytest.mark.parametrize("listing_limit", [pop3_proxy.UIDL_LISTING_LIMIT, 4])
async def test_retr_reaches_the_client_before_the_upstream_finished(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, listing_limit: int
) -> None:
    monkeypatch.setattr(pop3_proxy, "UIDL_LISTING_LIMIT", listing_limit)
    seen: list[bytes] = []
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    upstream_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(upstream_context)
    release = trio.Event()
    listeners = await nursery.start(
        partial(trio.serve_tcp, host="127.0.0.1"),
        partial(scripted_upstream, context=upstream_context, release=release, seen=seen),
        0,
    )
    upstream_port = listeners[0].socket.getsockname()[1]

    config = make_config(tmp_path / "data")
    proxy = {"allow": ("127.0.0.0/8",), "ca_files": (str(ca_file),)}
    config = msgspec.structs.replace(config, proxy=msgspec.convert(proxy, ProxyConfig))
    gateway = Gateway(config, environ={})
    listening: list[Listening] = await nursery.start(gateway.run)
    port = {item.name: item.port for item in listening}["pop3s"]
    assert gateway.archive is not None
    info, password = await gateway.archive.create_mailbox("stream")

    client_context = ssl.create_default_context(cafile=str(tmp_path / "data/tls/cert.pem"))
    with trio.fail_after(10):
        tcp = await trio.open_tcp_stream("localhost", port)
        client = trio.SSLStream(tcp, client_context, server_hostname="localhost")
        login = f"alice%127.0.0.1:{upstream_port}%{info.mailbox_id}"
        await client.send_all(f"USER {login}\r\nPASS secret\r\nNOOP\r\n".encode())
        received = b""
        while received.count(b"\r\n") < 4:
            received += await client.receive_some(65536)
        assert received.startswith(b"+OK") and b"-ERR" not in received, received
        await client.send_all(b"RETR 1\r\n")
        received = b""
        while len(received) < 64 * 1024:  # a good part of the first half, before release
            received += await client.receive_some(65536)
        assert not release.is_set()
        assert received.startswith(b"+OK %d octets\r\n" % len(MESSAGE))
        assert not gateway.archive.messages(info.mailbox_id)  # not stored before the end
        release.set()
        while not received.endswith(b"\r\n.\r\n"):
            received += await client.receive_some(65536)
        assert received.split(b"\r\n", 1)[1] == MESSAGE + b".\r\n"
        # The terminating dot came only after the copy was durable.
        key = await gateway.archive.unlock(info.mailbox_id, password)
        assert await stored_bodies(gateway.archive, info.mailbox_id, key) == [MESSAGE]
        message_id = gateway.archive.messages(info.mailbox_id)[0].message_id
        envelope = await gateway.archive.read_envelope(info.mailbox_id, message_id, key)
        assert envelope.upstream_uidl == "big-one"
        # The listing once; where it is over the limit, UIDL n for the message as well.
        assert b"NOOP" in seen  # relayed: it keeps the upstream session alive
        asked = [line for line in seen if line.startswith(b"UIDL")]
        assert asked == ([b"UIDL"] if listing_limit > 4 else [b"UIDL", b"UIDL 1"])
        await client.send_all(b"QUIT\r\n")
        await client.aclose()
    gateway.request_shutdown()
