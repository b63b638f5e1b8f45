"""The proxies' upstream side against a real POP3 server (a private Dovecot) and against a
fake one that must never receive a password: resolve, policy, TLS (implicit and STLS),
certificate checks, login (SPEC.md 15.1)."""

from __future__ import annotations

import ssl
from functools import partial
from pathlib import Path

import pytest
import trio

from gateway.servers.upstream import POP3Upstream, UpstreamError, client_context, open_upstream
from gateway.services.routing import RoutingError, TargetPolicy

from .peers import open_private_dovecot
from .peers.dovecot import pop3_octets

LOOPBACK = TargetPolicy.build(allow=["127.0.0.0/8"])
MESSAGE = b"Subject: upstream\r\n\r\n.a line with a dot\r\nend\r\n"


async def connect(
    port: int, context: ssl.SSLContext, *, implicit: bool, host: str = "127.0.0.2"
) -> POP3Upstream:
    tcp = await open_upstream(host, port, LOOPBACK, connect_timeout=10)
    return await POP3Upstream.start(tcp, "localhost", context, implicit_tls=implicit, io_timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("implicit", [False, True])
async def test_login_and_retrieve_from_dovecot(tmp_path: Path, implicit: bool) -> None:
    async with open_private_dovecot(tmp_path, users={"alice": "s3cret pass"}) as dovecot:
        dovecot.deliver("alice", MESSAGE)
        context = client_context((str(dovecot.ca_file),))
        port = dovecot.pop3s_port if implicit else dovecot.pop3_port
        upstream = await connect(port, context, implicit=implicit)
        try:
            assert upstream.tls.startswith("TLSv1.")
            assert (await upstream.login("alice", "s3cret pass")).ok
            stat = await upstream.command("STAT")
            assert stat.ok and stat.text.startswith("1 ")
            reply, body = await upstream.multiline("RETR", "1")
            assert reply.ok
            assert b"".join([piece async for piece in body]) == pop3_octets(MESSAGE)
            assert (await upstream.command("QUIT")).ok
        finally:
            await upstream.aclose()


@pytest.mark.slow
async def test_wrong_password_and_untrusted_certificate(tmp_path: Path) -> None:
    async with open_private_dovecot(tmp_path, users={"alice": "s3cret pass"}) as dovecot:
        upstream = await connect(
            dovecot.pop3s_port, client_context((str(dovecot.ca_file),)), implicit=True
        )
        try:
            assert not (await upstream.login("alice", "wrong")).ok
        finally:
            await upstream.aclose()
        with pytest.raises(UpstreamError, match="not trusted") as untrusted:
            await connect(dovecot.pop3s_port, client_context(), implicit=True)
        assert not untrusted.value.temporary
        with pytest.raises(UpstreamError, match="not trusted"):
            await connect(dovecot.pop3_port, client_context(), implicit=False)


async def test_denied_networks_and_unreachable_targets() -> None:
    with pytest.raises(RoutingError, match="denied"):
        await open_upstream("127.0.0.1", 110, TargetPolicy.build(), connect_timeout=5)
    with pytest.raises(RoutingError, match="deny list"):
        await open_upstream(
            "evil.example", 110, TargetPolicy.build(deny=["evil.example"]), connect_timeout=5
        )
    with trio.socket.socket() as probe:  # a port nobody listens on
        await probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(UpstreamError, match="cannot connect"):
        await open_upstream("127.0.0.1", closed_port, LOOPBACK, connect_timeout=5)


async def test_no_stls_means_no_password(nursery: trio.Nursery) -> None:
    """A target that does not offer STLS: the session fails and the fake server never sees
    USER, PASS or AUTH."""
    received = bytearray()

    async def fake(stream: trio.SocketStream) -> None:
        await stream.send_all(b"+OK fake POP3\r\n")
        while data := await stream.receive_some(1024):
            received.extend(data)
            if b"CAPA" in data:
                await stream.send_all(b"+OK\r\nUSER\r\nUIDL\r\n.\r\n")
            elif data.strip():
                await stream.send_all(b"-ERR no\r\n")

    listeners = await nursery.start(partial(trio.serve_tcp, fake, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    tcp = await open_upstream("127.0.0.1", port, LOOPBACK, connect_timeout=5)
    with pytest.raises(UpstreamError, match="does not offer STLS") as error:
        await POP3Upstream.start(
            tcp, "localhost", client_context(), implicit_tls=False, io_timeout=5
        )
    assert not error.value.temporary
    await trio.sleep(0.1)
    assert bytes(received) == b"CAPA\r\n"
