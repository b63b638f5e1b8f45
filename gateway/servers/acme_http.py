"""The ACME http-01 responder (RFC 8555 8.3), in the journal while ``[tls.acme]`` is on.

The CA proves that a name is ours by fetching
``http://<name>/.well-known/acme-challenge/<token>`` on port 80 and expecting the key
authorization the ACME client was handed for that token. This listener answers exactly
that: ``GET`` (or ``HEAD``) of a token being asked for gets ``200`` and the key
authorization as ``text/plain``; anything else gets ``404`` (``405`` for another method,
``400`` for what h11 cannot parse). One request a connection, a few kilobytes at most, ten
seconds each, at most 64 connections at once: port 80 is open to the whole internet, and
nothing else is served on it. h11 is the protocol machine; this module only does I/O.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import h11
import trio

from ..config import AcmeSettings
from .sockets import StartupError

__all__ = ["CHALLENGE_PATH", "bind_acme_http", "serve_acme_http"]

logger = logging.getLogger("gateway")

CHALLENGE_PATH = "/.well-known/acme-challenge/"
# RFC 8555 8.1: a token is base64url without padding; 128 bits at least, so a few dozen
# characters. Anything that is not one is not looked up.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
MAX_REQUEST_BYTES = 8192  # the request line and headers
REQUEST_TIMEOUT = 10.0  # seconds for a whole exchange
MAX_CONNECTIONS = 64
# After the reply: what the client still sends is read and dropped for a moment before the
# close, so a request cut off (too long) gets its 400 rather than a reset (RFC 9112 9.6).
LINGER_SECONDS, LINGER_BYTES = 1.0, 65536

Lookup = Callable[[str], str | None]


async def bind_acme_http(settings: AcmeSettings) -> list[trio.SocketListener]:
    """Bind the responder's sockets (every address when ``http_address`` is empty); one
    that cannot bind stops start-up, naming its address."""
    host = settings.http_address or None
    try:
        listeners = await trio.open_tcp_listeners(settings.http_port, host=host)
    except OSError as exc:
        raise StartupError(
            f"listener acme-http: cannot listen on {settings.http_address or '*'}:"
            f"{settings.http_port}: {exc.strerror or exc}"
        ) from None
    for listener in listeners:
        address, port = listener.socket.getsockname()[:2]
        logger.info(
            "event=listening name=acme-http protocol=http address=%s port=%d tls=none",
            address,
            port,
        )
    return listeners


async def serve_acme_http(listeners: list[trio.SocketListener], lookup: Lookup) -> None:
    """Answer http-01 challenges on ``listeners`` until cancelled; ``lookup`` gives the key
    authorization of a token being asked for (None: not asked for)."""
    active = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal active
        if active >= MAX_CONNECTIONS:
            await trio.aclose_forcefully(stream)
            return
        active += 1
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await _exchange(stream, lookup)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            active -= 1
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


async def _exchange(stream: trio.SocketStream, lookup: Lookup) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    try:
        request = await _read_request(stream, connection)
    except h11.RemoteProtocolError:
        # h11 lets a server answer a request it could not parse (IDLE -> Response).
        await _respond(stream, connection, 400, b"bad request\n", head=False)
        return
    if request is None:
        return
    client = _peer(stream)
    if request.method not in (b"GET", b"HEAD"):
        await _respond(stream, connection, 405, b"method not allowed\n", head=False)
        return
    path = request.target.decode("ascii", "replace").split("?", 1)[0]
    answer = None
    if path.startswith(CHALLENGE_PATH):
        token = path[len(CHALLENGE_PATH) :]
        if _TOKEN.fullmatch(token):
            answer = lookup(token)
    if answer is None:
        logger.debug("event=acme-http-not-found client=%s path=%r", client, path[:200])
        await _respond(stream, connection, 404, b"not found\n", head=request.method == b"HEAD")
        return
    logger.info("event=acme-challenge-answered client=%s token=%s", client, token)
    await _respond(stream, connection, 200, answer.encode("ascii"), head=request.method == b"HEAD")


async def _read_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> h11.Request | None:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            connection.receive_data(data)  # b"": the end, which h11 turns into an event
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed before a request: nothing to answer


async def _respond(
    stream: trio.SocketStream,
    connection: h11.Connection,
    status: int,
    body: bytes,
    *,
    head: bool,
) -> None:
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    data = connection.send(h11.Response(status_code=status, headers=headers))
    if not head:
        data += connection.send(h11.Data(data=body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)
    await stream.send_eof()
    with trio.move_on_after(LINGER_SECONDS):
        dropped = 0
        while dropped < LINGER_BYTES and (chunk := await stream.receive_some(16384)):
            dropped += len(chunk)


def _peer(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return ""
