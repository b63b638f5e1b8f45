"""``event=session-dropped`` (SPEC.md 12.1): a client that only goes away (a browser closing
the spare connections it opened for the console, a port probe, a reset) is logged at DEBUG;
a connection that failed for another reason stays at INFO. Issue 15: every console page load
logged four or five of them at INFO."""

from __future__ import annotations

import logging
import ssl
import struct

import pytest
import trio

from gateway.servers.listeners import _went_away

from .gateway_helpers import Running


async def connect(port: int, source: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return sock


async def dropped(caplog: pytest.LogCaptureFixture, *clients: str) -> logging.LogRecord:
    """The session-dropped record of one of ``clients``, once the gateway has logged it."""
    with trio.fail_after(10):
        while True:
            for record in caplog.records:
                message = record.getMessage()
                if "event=session-dropped" in message and any(
                    f" client={client} " in message for client in clients
                ):
                    return record
            await trio.sleep(0.01)


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="gateway")
    return caplog


async def test_a_client_that_closes_before_its_handshake_is_debug(
    running: Running, logged: pytest.LogCaptureFixture
) -> None:
    for listener, source in (("admin", "127.0.0.2"), ("smtps", "127.0.0.3")):
        sock = await connect(running.port(listener), source)
        sock.close()
        record = await dropped(logged, source)
        assert record.levelno == logging.DEBUG, record.getMessage()
        assert f"listener={listener} " in record.getMessage()


async def test_a_client_that_resets_is_debug(
    running: Running, logged: pytest.LogCaptureFixture
) -> None:
    sock = await connect(running.port("admin"), "127.0.0.4")
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    # The address of a connection reset before it was looked at is gone with it.
    record = await dropped(logged, "127.0.0.4", "unknown")
    assert record.levelno == logging.DEBUG, record.getMessage()
    assert "Connection reset" in record.getMessage()


async def test_a_browser_closing_a_spare_connection_is_debug(
    running: Running, logged: pytest.LogCaptureFixture
) -> None:
    """A handshake, then a TCP close without close_notify and without a request."""
    stream = trio.SSLStream(
        trio.SocketStream(await connect(running.port("admin"), "127.0.0.5")),
        running.context(),
        server_hostname="localhost",
    )
    await stream.do_handshake()
    await trio.aclose_forcefully(stream)  # no close_notify: a ragged EOF
    record = await dropped(logged, "127.0.0.5")
    assert record.levelno == logging.DEBUG, record.getMessage()


async def test_a_failed_handshake_stays_info(
    running: Running, logged: pytest.LogCaptureFixture
) -> None:
    """Plain HTTP to the TLS listener: a client that is misconfigured, not just gone."""
    stream = trio.SocketStream(await connect(running.port("admin"), "127.0.0.6"))
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    record = await dropped(logged, "127.0.0.6")
    await stream.aclose()
    assert record.levelno == logging.INFO, record.getMessage()
    assert "TLS handshake failed" in record.getMessage()


def test_what_counts_as_going_away() -> None:
    def caused(outer: Exception, cause: BaseException) -> Exception:
        outer.__cause__ = cause
        return outer

    assert _went_away(trio.BrokenResourceError())  # reason=''
    assert _went_away(caused(trio.BrokenResourceError("x"), ConnectionResetError(104, "reset")))
    assert _went_away(caused(trio.BrokenResourceError("x"), BrokenPipeError(32, "pipe")))
    assert _went_away(caused(trio.BrokenResourceError("x"), ssl.SSLEOFError(8, "EOF")))
    assert _went_away(ConnectionResetError(104, "reset"))
    assert not _went_away(caused(trio.BrokenResourceError("x"), ssl.SSLError(1, "bad")))
    assert not _went_away(OSError(24, "Too many open files"))
    cycle = trio.BrokenResourceError("x")
    cycle.__cause__ = caused(trio.BrokenResourceError("y"), cycle)
    assert not _went_away(cycle)
