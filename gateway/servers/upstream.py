"""Connections to the proxies' upstream servers: resolve, check every address against the
target policy, connect to an address that passed, and speak TLS with the certificate checked.
The POP3 client role on top (:class:`POP3Upstream`) logs in only once TLS is up, so a password
never crosses an unencrypted link (SPEC.md 15.1).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import trio

from ..protocols.pop3 import (
    NEED_DATA,
    BodyData,
    BodyEnd,
    ConnectionClosed,
    Continuation,
    Reply,
    ReplyReader,
    auth_plain_response,
    format_command,
)
from ..services.routing import RoutingError, TargetPolicy

__all__ = ["POP3Upstream", "UpstreamError", "open_upstream"]

RECEIVE_SIZE = 64 * 1024


class UpstreamError(Exception):
    """The upstream server cannot be used; ``temporary`` says whether trying later may help.
    The message is safe to show the client (no password, no internal detail)."""

    def __init__(self, message: str, *, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


async def open_upstream(
    host: str, port: int, policy: TargetPolicy, *, connect_timeout: float
) -> trio.SocketStream:
    """A TCP connection to ``host`` on an address the policy allows. Raises RoutingError
    (denied) or UpstreamError (cannot resolve or connect)."""
    policy.check_name(host)
    with trio.move_on_after(connect_timeout) as scope:
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        except OSError as exc:
            raise UpstreamError(f"cannot resolve {host}: {exc.strerror or exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allowed = []
        for address in addresses:
            try:
                policy.check(host, address)
            except RoutingError:
                continue
            allowed.append(address)
        if not allowed:
            raise RoutingError(f"every address of {host} ({', '.join(addresses)}) is denied")
        last: OSError | None = None
        for address in allowed:
            try:
                # The literal address that was checked: a second lookup cannot swap it.
                return await trio.open_tcp_stream(address, port)
            except OSError as exc:
                last = exc
        assert last is not None
        raise UpstreamError(f"cannot connect to {host} port {port}: {last.strerror or last}")
    assert scope.cancelled_caught
    raise UpstreamError(f"connecting to {host} port {port} timed out")


def client_context(cafiles: tuple[str, ...] = (), *, verify: bool = True) -> ssl.SSLContext:
    """TLS toward upstream: the system trust store plus ``cafiles``, TLS 1.2 or later, the
    host name checked; ``verify=False`` only for a configured per-target exception."""
    context = ssl.create_default_context()
    for cafile in cafiles:
        context.load_verify_locations(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(eq=False)
class POP3Upstream:
    """One POP3 session with an upstream server, in the client role."""

    stream: trio.abc.Stream
    server_name: str
    timeout: float
    reader: ReplyReader
    tls: str = ""

    @classmethod
    async def start(
        cls,
        tcp: trio.SocketStream,
        server_name: str,
        context: ssl.SSLContext,
        *,
        implicit_tls: bool,
        io_timeout: float,
    ) -> POP3Upstream:
        """TLS (implicit, or STLS after the greeting: refused if not offered), greeting read.
        Raises UpstreamError; on error the connection is closed."""
        session = cls(tcp, server_name, io_timeout, ReplyReader())
        try:
            await session._open(context, implicit_tls)
        except BaseException:
            await trio.aclose_forcefully(session.stream)
            raise
        return session

    async def _open(self, context: ssl.SSLContext, implicit_tls: bool) -> None:
        if implicit_tls:
            await self._handshake(context)
        greeting = await self._reply()
        if not greeting.ok:
            raise UpstreamError(f"{self.server_name} refused the session: {greeting.text}")
        if implicit_tls:
            return
        if "STLS" not in await self.capabilities():
            raise UpstreamError(
                f"{self.server_name} does not offer STLS; the password is not sent in the clear",
                temporary=False,
            )
        reply = await self.command("STLS")
        if not reply.ok:
            raise UpstreamError(f"{self.server_name} refused STLS: {reply.text}")
        self.reader = ReplyReader()  # nothing read in the clear carries over (RFC 2595)
        await self._handshake(context)

    async def _handshake(self, context: ssl.SSLContext) -> None:
        ssl_stream = trio.SSLStream(self.stream, context, server_hostname=self.server_name)
        try:
            with trio.fail_after(self.timeout):
                await ssl_stream.do_handshake()
        except trio.TooSlowError:
            raise UpstreamError(f"TLS handshake with {self.server_name} timed out") from None
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise UpstreamError(
                    f"{self.server_name}'s certificate is not trusted: {cause.verify_message}",
                    temporary=False,
                ) from None
            raise UpstreamError(f"TLS handshake with {self.server_name} failed: {cause}") from None
        self.stream = ssl_stream
        self.tls = f"{ssl_stream.version()} {(ssl_stream.cipher() or ('',))[0]}".strip()

    async def _event(self) -> object:
        while True:
            event = self.reader.next_event()
            if event is not NEED_DATA:
                return event
            try:
                with trio.fail_after(self.timeout):
                    data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.TooSlowError:
                raise UpstreamError(f"{self.server_name} did not answer in time") from None
            except (trio.BrokenResourceError, OSError) as exc:
                raise UpstreamError(f"connection to {self.server_name} lost: {exc}") from None
            self.reader.receive_data(bytes(data))

    async def _reply(self) -> Reply:
        event = await self._event()
        if isinstance(event, ConnectionClosed):
            raise UpstreamError(f"{self.server_name} closed the connection")
        if not isinstance(event, Reply):
            raise UpstreamError(f"{self.server_name} sent an unexpected response")
        return event

    async def _send(self, line: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.stream.send_all(line)
        except trio.TooSlowError:
            raise UpstreamError(f"{self.server_name} stopped reading") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise UpstreamError(f"connection to {self.server_name} lost: {exc}") from None

    async def command(self, verb: str, *args: str) -> Reply:
        """A single-line command and its status line."""
        self.reader.expect()
        await self._send(format_command(verb, *args))
        return await self._reply()

    async def multiline(self, verb: str, *args: str) -> tuple[Reply, AsyncIterator[bytes]]:
        """A multi-line command: its status line and, if +OK, its dot-unstuffed body in
        pieces (iterate it to the end before the next command)."""
        self.reader.expect(multiline=True)
        await self._send(format_command(verb, *args))
        reply = await self._reply()
        return reply, self._body() if reply.ok else _empty()

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._event()
            if isinstance(event, BodyData):
                yield event.data
            elif isinstance(event, BodyEnd):
                return
            else:
                raise UpstreamError(f"{self.server_name} broke off a multi-line response")

    async def capabilities(self) -> dict[str, list[str]]:
        reply, body = await self.multiline("CAPA")
        capabilities: dict[str, list[str]] = {}
        text = b"".join([piece async for piece in body]).decode("utf-8", "replace")
        if reply.ok:
            for line in text.splitlines():
                name, *params = line.split()
                capabilities[name.upper()] = params
        return capabilities

    async def login(self, username: str, password: str) -> Reply:
        """USER/PASS, or AUTH PLAIN where the server offers only SASL. Only ever called on a
        TLS session (``start`` saw to it)."""
        if not self.tls:
            raise UpstreamError("refusing to send credentials without TLS", temporary=False)
        reply = await self.command("USER", username)
        if reply.ok:
            return await self.command("PASS", password)
        response = auth_plain_response(username, password)
        self.reader.expect()
        await self._send(format_command("AUTH", "PLAIN", response))
        event = await self._event()
        if isinstance(event, Continuation):
            await self._send(b"*\r\n")
            return await self._reply()
        if isinstance(event, Reply):
            return event
        raise UpstreamError(f"{self.server_name} sent an unexpected response to AUTH")

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
