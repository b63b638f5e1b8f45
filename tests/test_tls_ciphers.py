"""TLS 1.2 with AEAD suites only, for every context the gateway makes (issue 12, item 13):
the listeners' server contexts, the admin command line's and the proxies' client contexts."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gateway.client import TrustSettings
from gateway.servers.upstream import client_context
from gateway.tls import make_self_signed, server_context

CBC_SUITE = "ECDHE-ECDSA-AES128-SHA256"  # TLS 1.2, AES-CBC with HMAC-SHA256
AEAD_SUITE = "ECDHE-ECDSA-AES128-GCM-SHA256"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert_pem, key_pem = make_self_signed("localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key


def tls12_client(cafile: Path, suite: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite)
    return context


def tls12_server(cert: Path, key: Path, suite: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(suite)
    context.load_cert_chain(cert, key)
    return context


async def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> str | None:
    """The TLS 1.2 suite the two agree on, or None if the handshake fails."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client_tls = trio.SSLStream(client_stream, client, server_hostname="localhost")
    server_tls = trio.SSLStream(server_stream, server, server_side=True)
    failed = False

    async def side(stream: trio.SSLStream[trio.StapledStream[Any, Any]]) -> None:
        nonlocal failed
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError:
            failed = True
            await trio.aclose_forcefully(stream)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, client_tls)
            nursery.start_soon(side, server_tls)
    if failed:
        return None
    cipher = client_tls.cipher()
    assert cipher is not None
    name: str = cipher[0]
    return name


async def test_listener_refuses_a_tls12_cbc_suite(certificate: tuple[Path, Path]) -> None:
    """A client that offers only CBC suites in TLS 1.2 used to get one (MAC-then-encrypt:
    Lucky Thirteen, padding oracles)."""
    cert, key = certificate
    server = server_context(cert, key)
    assert await handshake(tls12_client(cert, CBC_SUITE), server) is None
    assert await handshake(tls12_client(cert, AEAD_SUITE), server) == AEAD_SUITE
    offered = [c for c in server.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert offered and all(c["aead"] for c in offered)


def test_listener_refuses_cbc_to_openssl_s_client(certificate: tuple[Path, Path]) -> None:
    """The same, as an operator checks it: ``openssl s_client -tls1_2 -cipher <suite>``
    against a socket served with the listener's context."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed (Debian: apt-get install openssl)")
    cert, key = certificate
    server = server_context(cert, key)

    def s_client(suite: str) -> bool:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def serve() -> None:
            with listener:
                connection, _ = listener.accept()
                try:
                    with server.wrap_socket(connection, server_side=True) as tls:
                        tls.recv(1)
                except (ssl.SSLError, OSError):
                    connection.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            result = subprocess.run(
                [
                    *(openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2"),
                    *("-cipher", suite, "-servername", "localhost"),
                ],
                input=b"",
                capture_output=True,
                timeout=30,
                check=False,
            )
        finally:
            thread.join(30)
        return result.returncode == 0 and f"Cipher is {suite}".encode() in result.stdout

    assert not s_client(CBC_SUITE)
    assert s_client(AEAD_SUITE)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda cafile: TrustSettings(cafile=str(cafile)).context(), id="cli"),
        pytest.param(
            lambda cafile: TrustSettings(fingerprint="00" * 32).context(), id="cli-fingerprint"
        ),
        pytest.param(lambda cafile: client_context((str(cafile),)), id="upstream"),
    ],
)
async def test_client_contexts_refuse_a_tls12_cbc_server(
    certificate: tuple[Path, Path], make: Callable[[Path], ssl.SSLContext]
) -> None:
    """The admin command line and the proxies (toward upstream) no longer accept a server
    that picks a CBC suite."""
    cert, key = certificate
    context = make(cert)
    assert await handshake(context, tls12_server(cert, key, CBC_SUITE)) is None
    assert await handshake(context, tls12_server(cert, key, AEAD_SUITE)) == AEAD_SUITE
