"""A client of the admin API (the command line's, and the tests'): one websocket, typed
requests, replies matched by id, audit records on their own channel.

The server's certificate is checked either against a CA file (the data folder's self-signed
certificate is its own CA) or the system store, or pinned by its SHA-256 fingerprint (for a
remote gateway with a self-signed certificate: ``gateway`` logs it at every start, and the
status reply shows it).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from ._groups import leaves
from .protocols import admin as api
from .protocols.admin import ApiError
from .tls import use_aead_only

__all__ = ["AdminClient", "ClientError", "NotListening", "TrustSettings", "connect"]

CONNECT_TIMEOUT = 15.0


class ClientError(Exception):
    """Cannot reach or talk to the gateway (not an API error reply)."""


class NotListening(ClientError):
    """Nothing accepts connections at the address (refused, or no route to the host): the
    gateway is most likely not running there. ``url`` is the address tried."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


@dataclass(frozen=True, slots=True)
class TrustSettings:
    cafile: str | None = None  # None: the system trust store
    fingerprint: str | None = None  # hex SHA-256 of the certificate (DER); ":" allowed

    def context(self) -> ssl.SSLContext:
        """TLS 1.2 or later, AEAD suites only (as the gateway's listeners)."""
        if self.fingerprint is not None:
            context = use_aead_only(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the fingerprint is checked instead
            return context
        context = use_aead_only(ssl.create_default_context())  # the system store ...
        if self.cafile is not None:
            context.load_verify_locations(cafile=self.cafile)  # ... and this certificate
        return context


class AdminClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, trio.MemorySendChannel[api.Reply]] = {}
        self._audit_send, self.audit = trio.open_memory_channel[api.Reply](10_000)
        self.closed: str | None = None  # the server's close code and reason, once closed

    async def _read(self) -> None:
        try:
            while True:
                reply = api.decode_reply(await self.ws.get_message())
                waiter = None
                if not isinstance(reply, api.Audit | api.AuditCaughtUp) and isinstance(
                    reply.id, int
                ):
                    waiter = self._waiting.pop(reply.id, None)
                if waiter is not None:
                    waiter.send_nowait(reply)
                else:  # audit records, and anything the server says unasked
                    await self._audit_send.send(reply)
        except ConnectionClosed as exc:
            reason = exc.reason
            self.closed = (
                "closed" if reason is None else f"{reason.code} {reason.reason or reason.name}"
            )
        finally:
            self._audit_send.close()
            for waiter in self._waiting.values():
                waiter.close()

    async def call(self, request: api.Request) -> api.Reply:
        """Send a request (its id is set here) and wait for its reply, error replies
        included. Raises ClientError if the connection ends first."""
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[api.Reply](1)
        self._waiting[request_id] = send
        try:
            await self.ws.send_message(api.encode_request(_with_id(request, request_id)))
        except ConnectionClosed:
            self._waiting.pop(request_id, None)
            raise ClientError(f"the gateway closed the connection ({self.closed})") from None
        try:
            return await receive.receive()
        except trio.EndOfChannel:
            raise ClientError(f"the gateway closed the connection ({self.closed})") from None

    async def request(self, request: api.Request) -> api.Reply:
        """As :meth:`call`, but an error reply raises ApiError."""
        reply = await self.call(request)
        if isinstance(reply, api.ErrorReply):
            raise ApiError(reply.code, reply.message, retry_after=reply.retry_after)
        return reply

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send_message(text)


def _with_id(request: api.Request, request_id: int) -> api.Request:
    replaced: api.Request = msgspec.structs.replace(request, id=request_id)
    return replaced


@asynccontextmanager
async def connect(
    url: str, trust: TrustSettings, *, origin: str | None = None
) -> AsyncIterator[AdminClient]:
    """Open the API at ``url`` (``wss://host:port/api``). Raises ClientError."""
    parts = urlsplit(url)
    if parts.scheme != "wss" or not parts.hostname:
        raise ClientError(f"{url}: the admin API is at wss://<host>:<port>/api")
    host, port = parts.hostname, parts.port or 443
    context = trust.context()
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            tcp = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        if _refused(exc):
            raise NotListening(
                url, f"cannot connect to {host}:{port}: connection refused"
            ) from None
        raise ClientError(f"cannot connect to {host}:{port}: {_reason(exc)}") from None
    stream = trio.SSLStream(tcp, context, server_hostname=host)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await stream.do_handshake()
    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
        await trio.aclose_forcefully(tcp)
        raise ClientError(f"cannot connect to {host}:{port}: {_reason(exc)}") from None
    if trust.fingerprint is not None:
        der = stream.getpeercert(binary_form=True) or b""
        seen = hashlib.sha256(der).hexdigest()
        wanted = trust.fingerprint.replace(":", "").lower()
        if not hmac.compare_digest(seen, wanted):
            await trio.aclose_forcefully(stream)
            raise ClientError(f"certificate fingerprint {seen} is not the expected {wanted}")
    headers = [(b"Origin", origin.encode())] if origin else None
    try:
        async with trio.open_nursery() as nursery:
            try:
                ws = await wrap_client_stream(
                    nursery, stream, host, parts.path or "/api", extra_headers=headers
                )
            except HandshakeError as exc:
                await trio.aclose_forcefully(stream)
                raise ClientError(f"the gateway refused the websocket: {exc}") from None
            client = AdminClient(ws)
            nursery.start_soon(client._read)
            try:
                yield client
            finally:
                await ws.aclose()
                await trio.aclose_forcefully(stream)  # closed already, unless the server hung up
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps whatever ended it; give callers the one error they can handle.
        found = leaves(group)
        if len(found) != 1:
            raise
        leaf = found[0]
        if isinstance(leaf, HandshakeError):
            await trio.aclose_forcefully(stream)
            raise ClientError(f"the gateway refused the websocket: {leaf}") from None
        raise leaf from None


def _refused(exc: BaseException) -> bool:
    """Every address tried refused the connection: nothing listens on that port.
    (trio.open_tcp_stream raises one OSError for all its attempts, each in its cause.)"""
    if isinstance(exc, ConnectionRefusedError):
        return True
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        found = leaves(cause)
        return bool(found) and all(isinstance(e, ConnectionRefusedError) for e in found)
    return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return str(exc.__cause__)
    return str(exc)
