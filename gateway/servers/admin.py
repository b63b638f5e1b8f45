"""The admin listener: HTTPS serving the console page and the websocket API on one port.

Theory of operation
-------------------
The listener is implicit TLS (the gateway's accept loop does the handshake). A connection
sends one HTTP/1.1 request head, parsed with h11: ``GET /``, ``/console.js`` and
``/console.css`` get the console's static files (with a strict Content-Security-Policy), and
``GET /api`` with ``Upgrade: websocket`` becomes the API: the head already read is replayed
to trio-websocket through :class:`_Replay`, the Origin is checked (a browser page from any
other origin is refused with 403, so no other site can drive the API from an admin's browser),
and the connection then carries JSON requests and replies (``protocols.admin``).

Requests on one connection are served in order; each audit subscription runs in its own
task (history from the files, then its live queue), so a long replay never blocks requests.
A subscription dropped by the hub for falling behind closes the connection with code 4000
and the reason. Frames over ``MAX_FRAME`` bytes close it with 1009 (trio-websocket).

A logged-in connection watches its credential (``Accounts.wait_ended``): when it expires, is
revoked, is logged out or ended by a password change from any connection, its audit
subscriptions end at once and the connection is closed with code 4001 (after the reply to a
request it is serving), so a feed never outlives the login that opened it.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING

import h11
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from .. import __version__
from ..config import Config
from ..events import now
from ..ids import parse_mailbox_id
from ..log import LogWriteError
from ..protocols import admin as api
from ..protocols.admin import ApiError, ErrorCode
from ..services.accounts import Accounts, Principal
from ..services.admin import AdminService, mailbox_views
from ..services.audit import AuditHub, AuditRecord, Subscription
from ..tlsstream import is_tls
from .monitoring import Monitoring, Response

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["MAX_FRAME", "AdminServer"]

logger = logging.getLogger("gateway")

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
MAX_FRAME = 256 * 1024
CLOSE_FELL_BEHIND = 4000
CLOSE_LOGGED_OUT = 4001  # the connection's credential ended (console.js knows this code)
SESSION_ENDED = "the session has ended; log in again"
# A dropped subscriber's connection gets this long to take its close frame, then is cut off.
DROP_GRACE = 30.0

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_MONITORING = frozenset({"/healthz", "/readyz", "/metrics"})  # SPEC.md 13.7
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}


class _Replay(trio.abc.Stream):
    """A stream that first gives back bytes already read from it."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self.prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.prefix:
            size = len(self.prefix) if max_bytes is None else max_bytes
            data, self.prefix = self.prefix[:size], self.prefix[size:]
            return bytes(data)
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass(eq=False)
class AdminServer:
    gateway: Gateway
    service: AdminService
    accounts: Accounts
    hub: AuditHub
    config: Config
    monitoring: Monitoring
    connections: int = 0
    _assets: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # mailbox.passwd checks a mailbox password: the POP3 login's delay and lockout.
        pop3 = self.config.pop3
        self.service.throttle_passwd(pop3.failure_delay, pop3.max_failures)

    async def handle(self, stream: trio.abc.Stream, listener: object, peer: str) -> None:
        raw = b""
        with trio.move_on_after(HEAD_TIMEOUT):
            while b"\r\n\r\n" not in raw and len(raw) < MAX_HEAD:
                data = await stream.receive_some(4096)
                if not data:
                    return
                raw += data
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        connection.receive_data(raw)
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            await _respond(stream, connection, 400, f"bad request: {exc}\n".encode())
            return
        if not isinstance(event, h11.Request):
            await _respond(stream, connection, 408, b"request head too slow or too large\n")
            return
        headers = {name.lower(): value for name, value in event.headers}
        target = event.target.decode("ascii", "replace").split("?", 1)[0]
        if target == "/api":
            await self._websocket(stream, raw, headers, peer)
        elif event.method not in (b"GET", b"HEAD"):
            await _respond(stream, connection, 405, b"method not allowed\n", [(b"allow", b"GET")])
        elif target in _MONITORING:
            reply = await self._monitor(target, headers, peer)
            body = reply.body if event.method == b"GET" else b""
            await _respond(
                stream,
                connection,
                reply.status,
                body,
                [
                    *(reply.headers or [(b"content-type", b"text/plain; charset=utf-8")]),
                    (b"cache-control", b"no-store"),
                ],
                length=len(reply.body),
            )
        elif target in _STATIC:
            name, content_type = _STATIC[target]
            body = self._asset(name)
            await _respond(
                stream,
                connection,
                200,
                body if event.method == b"GET" else b"",
                [
                    (b"content-type", content_type.encode()),
                    (b"content-security-policy", _CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ],
                length=len(body),
            )
        else:
            await _respond(stream, connection, 404, b"not found\n")

    async def _monitor(self, target: str, headers: dict[bytes, bytes], peer: str) -> Response:
        monitoring = self.monitoring
        if target == "/healthz":
            return monitoring.healthz()
        if target == "/readyz":
            return monitoring.readyz()
        return await monitoring.scrape(headers.get(b"authorization"), peer)

    def _asset(self, name: str) -> bytes:
        if name not in self._assets:
            self._assets[name] = (
                resources.files("gateway.servers").joinpath("console", name).read_bytes()
            )
        return self._assets[name]

    def _allowed_origins(self, stream: trio.abc.Stream) -> set[str]:
        port = _local_port(stream)
        hosts = {self.config.hostname, "localhost", "127.0.0.1", "[::1]"}
        allowed = {f"https://{host}:{port}" for host in hosts}
        if port == 443:
            allowed |= {f"https://{host}" for host in hosts}
        return allowed | set(self.config.admin.allowed_origins)

    async def _websocket(
        self, stream: trio.abc.Stream, raw: bytes, headers: dict[bytes, bytes], peer: str
    ) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(
                nursery, _Replay(stream, raw), max_message_size=MAX_FRAME
            )
            origin = headers.get(b"origin")
            try:
                if origin is not None and origin.decode(
                    "ascii", "replace"
                ) not in self._allowed_origins(stream):
                    logger.info("event=admin-origin-refused client=%s origin=%r", peer, origin)
                    await request.reject(403, body=b"origin not allowed\n")
                    return
                if self.connections >= self.config.admin.max_connections:
                    await request.reject(503, body=b"too many admin connections\n")
                    return
                ws = await request.accept()
            except ConnectionClosed:
                return  # the client left before the handshake's answer: nothing to serve
            self.connections += 1
            try:
                await _Connection(self, ws, peer, nursery).serve()
            finally:
                self.connections -= 1
                nursery.cancel_scope.cancel()

    async def status(self, request_id: int | str | None) -> api.StatusReply:
        gateway = self.gateway
        archive = self.service.archive
        certificate = None
        if gateway.tls is not None:
            subject, sha256, expires = gateway.tls.summary()
            certificate = api.CertificateView(subject=subject, sha256=sha256, expires_at=expires)
        storage = await archive.storage_usage()
        await archive.all_opened()  # the views count every mailbox's messages
        moment = now()
        mailboxes = await mailbox_views(archive, archive.mailboxes(), self.config.mail_domain)
        return api.StatusReply(
            id=request_id,
            version=__version__,
            hostname=self.config.hostname,
            mail_domain=self.config.mail_domain,
            started_at=gateway.started_at,
            uptime_seconds=round((moment - gateway.started_at).total_seconds(), 1),
            listeners=tuple(
                api.ListenerView(
                    name=item.name,
                    protocol=str(item.protocol),
                    address=item.address,
                    port=item.port,
                    tls=str(item.tls),
                )
                for item in gateway.listening
            ),
            certificate=certificate,
            sessions=gateway.sessions_active,
            admin_connections=self.connections,
            storage_bytes=storage.used_bytes,
            disk_free_bytes=storage.free_bytes,
            control_seq=archive.next_control_seq,
            mailboxes=mailboxes,
            workers=tuple(gateway.worker_sessions()),
            checkpoint_vkey=gateway.checkpoint_vkey,
            messages_per_minute=tuple(
                api.MinuteView(
                    minute=datetime.fromtimestamp(count.minute * 60, UTC),
                    accepted=count.accepted,
                    retrieved=count.retrieved,
                )
                for count in self.monitoring.metrics.per_minute.window(moment)
            ),
        )


class _Connection:
    """One websocket client: its login, its requests, its audit subscriptions."""

    def __init__(
        self, server: AdminServer, ws: WebSocketConnection, peer: str, nursery: trio.Nursery
    ) -> None:
        self.server = server
        self.ws = ws
        self.peer = peer
        self.nursery = nursery
        self.principal: Principal | None = None
        self.subscriptions: dict[int, Subscription] = {}
        # Held while a request is served, so a credential that ends meanwhile closes the
        # connection only after that request's reply.
        self._serving = trio.Lock()
        self._watch_scope: trio.CancelScope | None = None

    async def serve(self) -> None:
        try:
            while True:
                try:
                    message = await self.ws.get_message()
                except ConnectionClosed:
                    return
                async with self._serving:
                    await self._send(await self._answer(message))
        except ConnectionClosed:
            return
        finally:
            self._end_subscriptions()

    def _logged_in(self, principal: Principal | None) -> None:
        """Set the connection's login, and watch it (the previous watch ends)."""
        self.principal = principal
        if self._watch_scope is not None:
            self._watch_scope.cancel()
            self._watch_scope = None
        if principal is not None:
            self._watch_scope = trio.CancelScope()
            self.nursery.start_soon(self._watch, principal, self._watch_scope)

    async def _watch(self, principal: Principal, scope: trio.CancelScope) -> None:
        """End what ``principal`` allowed the moment it ends (SPEC.md 13.2)."""
        with scope:
            await self.server.accounts.wait_ended(principal)
            self._end_subscriptions()  # at once: not one more record
            async with self._serving:
                if self.principal is not principal:
                    return
                self.principal = None
                self._watch_scope = None
                logger.info(
                    "event=admin-session-ended actor=%s client=%s", principal.label, self.peer
                )
            await self.ws.aclose(CLOSE_LOGGED_OUT, SESSION_ENDED)

    def _end_subscriptions(self) -> None:
        for subscription in list(self.subscriptions.values()):
            self.server.hub.unsubscribe(subscription)
        self.subscriptions.clear()

    async def _send(self, reply: api.Reply) -> None:
        await self.ws.send_message(api.encode_reply(reply))

    async def _answer(self, message: str | bytes) -> api.Reply:
        request_id: int | str | None = None
        try:
            request = api.decode_request(message)
            request_id = request.id
            return await self._dispatch(request)
        except ApiError as error:
            return error.reply(request_id if error.request_id is None else error.request_id)
        except Exception:
            logger.exception("event=admin-request-failed client=%s", self.peer)
            return api.ErrorReply(
                id=request_id,
                code=ErrorCode.INTERNAL,
                message="internal error; the gateway's log has the details",
            )

    async def _dispatch(self, request: api.Request) -> api.Reply:
        server = self.server
        if isinstance(request, api.Login):
            principal, session = await server.service.login(request, self.peer)
            self._logged_in(principal)
            return session
        if self.principal is not None and not server.accounts.still_valid(self.principal):
            self._logged_in(None)
            self._end_subscriptions()
            raise ApiError(ErrorCode.UNAUTHENTICATED, SESSION_ENDED)
        if self.principal is None:
            raise ApiError(ErrorCode.UNAUTHENTICATED, "log in first")
        match request:
            case api.Logout():
                principal = self.principal
                self._logged_in(None)
                self._end_subscriptions()
                try:
                    await server.accounts.logout(principal, self.peer)
                except LogWriteError as exc:
                    raise ApiError(ErrorCode.UNAVAILABLE, f"logout not recorded: {exc}") from None
                return api.Done(id=request.id)
            case api.Status():
                return await server.status(request.id)
            case api.AuditSubscribe():
                return self._subscribe(request)
            case api.AuditUnsubscribe():
                entry = self.subscriptions.pop(request.subscription, None)
                if entry is None:
                    raise ApiError(ErrorCode.BAD_REQUEST, f"no subscription {request.subscription}")
                server.hub.unsubscribe(entry)
                return api.Done(id=request.id)
            case _:
                return await server.service.handle(request, self.principal, self.peer)

    def _subscribe(self, request: api.AuditSubscribe) -> api.Reply:
        hub = self.server.hub
        mailbox = None
        if request.mailbox is not None:
            try:
                mailbox = parse_mailbox_id(request.mailbox)
            except ValueError as exc:
                raise ApiError(ErrorCode.BAD_REQUEST, str(exc)) from None
        if request.since is not None and request.since < 0:
            raise ApiError(ErrorCode.BAD_REQUEST, "since must be 0 or more")
        subscription = hub.subscribe(mailbox, frozenset(request.types), since=request.since)
        self.subscriptions[subscription.id] = subscription
        self.nursery.start_soon(self._feed, subscription, request)
        return api.Subscribed(
            id=request.id, subscription=subscription.id, next_seq=subscription.start_seq
        )

    async def _feed(self, subscription: Subscription, request: api.AuditSubscribe) -> None:
        """History, then live records, until unsubscribed, dropped or disconnected. Never
        cancelled from inside the connection (see AuditHub.unsubscribe)."""
        hub = self.server.hub
        try:
            if request.since is not None:
                history = hub.history(request.since, subscription.start_seq)
                async with aclosing(history) as batches:
                    async for batch in batches:
                        for record in batch:
                            if subscription.ended:
                                return
                            if record.matches(subscription.mailbox, subscription.types):
                                await self._send(self._audit(subscription, record))
            if subscription.ended:
                return
            await self._send(
                api.AuditCaughtUp(
                    id=request.id, subscription=subscription.id, next_seq=subscription.start_seq
                )
            )
            if not request.follow:
                return
            self.nursery.start_soon(self._cut_off_if_stuck, subscription)
            async for record in subscription.receive:
                if subscription.dropped is not None or subscription.ended:
                    break
                await self._send(self._audit(subscription, record))
            if subscription.dropped is not None:
                logger.info(
                    "event=audit-subscriber-dropped client=%s reason=%r",
                    self.peer,
                    subscription.dropped,
                )
                await self.ws.aclose(CLOSE_FELL_BEHIND, subscription.dropped[:120])
        except ConnectionClosed:
            pass
        finally:
            hub.unsubscribe(subscription)
            self.subscriptions.pop(subscription.id, None)

    async def _cut_off_if_stuck(self, subscription: Subscription) -> None:
        """A dropped subscriber that does not even take its close frame is disconnected."""
        await subscription.finished.wait()
        if subscription.dropped is None:
            return  # unsubscribed: nothing to enforce
        await trio.sleep(DROP_GRACE)
        self.nursery.cancel_scope.cancel()

    @staticmethod
    def _audit(subscription: Subscription, record: AuditRecord) -> api.Audit:
        return api.Audit(
            subscription=subscription.id,
            seq=record.seq,
            chain=record.chain.hex(),
            record=record.body,
            event=record.event,
        )


async def _respond(
    stream: trio.abc.Stream,
    connection: h11.Connection,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    length: int | None = None,
) -> None:
    headers = [
        *(headers or [(b"content-type", b"text/plain; charset=utf-8")]),
        (b"content-length", str(len(body) if length is None else length).encode()),
        (b"connection", b"close"),
    ]
    try:
        data = connection.send(h11.Response(status_code=status, headers=headers))
    except h11.LocalProtocolError:
        # The request was too broken for h11 to answer in kind: answer by hand.
        data = (
            f"HTTP/1.1 {status} Error\r\n".encode()
            + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            + b"\r\n"
        )
    await stream.send_all((data or b"") + body)
    with trio.move_on_after(1):
        await stream.aclose()  # TLS close_notify: the client sees a clean end of the response


def _local_port(stream: trio.abc.Stream) -> int:
    inner = stream.transport_stream if is_tls(stream) else stream
    if isinstance(inner, trio.SocketStream):
        port: int = inner.socket.getsockname()[1]
        return port
    return 0
