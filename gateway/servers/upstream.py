"""Connections to the proxies' upstream servers: resolve, check every address against the
target policy, connect to an address that passed, and speak TLS with the certificate checked.

The client roles on top (:class:`POP3Upstream`, :class:`SMTPUpstream`) are trio drivers of the
protocols' client machines (``protocols.pop3.ClientConnection``,
``protocols.smtp.ClientConnection``): they write what ``send()`` and ``data_to_send()`` give,
feed what the server sends to ``receive_data()``, run the TLS handshake when the machine says
so, and time every step. Everything about the protocol (greetings, EHLO and CAPA, STARTTLS and
STLS with their injection check, the choice of AUTH mechanism and its challenges, listings) is
the machines'; their errors become :class:`UpstreamError`. Credentials go only over TLS: the
machines refuse to send them in the clear, and ``start`` brings TLS up first (SPEC.md 15.1,
15.2).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import trio

from ..protocols import RemoteProtocolError, pop3, smtp
from ..services.routing import RoutingError, TargetPolicy
from ..tls import use_aead_only
from ..tlsstream import TLSStream, wrap_client

__all__ = ["POP3Upstream", "SMTPUpstream", "UpstreamError", "open_upstream", "wrap_tls"]

RECEIVE_SIZE = 64 * 1024


class _Machine(Protocol):
    """What the driver needs of either client machine."""

    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> object: ...
    def data_to_send(self) -> bytes: ...
    def tls_started(self) -> None: ...


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


@functools.lru_cache(maxsize=8)
def client_context(cafiles: tuple[str, ...] = (), *, verify: bool = True) -> ssl.SSLContext:
    """TLS toward upstream: the system trust store plus ``cafiles``, TLS 1.2 or later with
    AEAD suites only, the host name checked; ``verify=False`` only for a configured per-target
    exception. Made once per process and setting (loading the system store takes tens of
    milliseconds), then shared by every connection."""
    context = use_aead_only(ssl.create_default_context())
    for cafile in cafiles:
        context.load_verify_locations(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def wrap_tls(stream: trio.abc.Stream, context: ssl.SSLContext, server_hostname: str) -> TLSStream:
    """The one place the upstream side makes a TLS client stream (the handshake is the
    caller's)."""
    return wrap_client(stream, context, server_hostname)


@dataclass(eq=False)
class _Upstream:
    """What both client roles share: TLS toward ``server_name``, timed reads into the client
    machine and timed writes of what it gives, every failure an UpstreamError."""

    stream: trio.abc.Stream
    server_name: str
    timeout: float
    tls: str = field(default="", init=False)
    _NEED_DATA: ClassVar[object]

    @property
    def _conn(self) -> _Machine:
        raise NotImplementedError

    def _error(self, exc: RemoteProtocolError[object]) -> UpstreamError:
        return UpstreamError(f"{self.server_name} {exc}", temporary=exc.temporary)

    async def _opened(self, opening: Coroutine[object, object, None]) -> None:
        """Await ``opening`` (the protocol's TLS and greeting); on any error the connection
        is closed."""
        try:
            await opening
        except BaseException:
            await trio.aclose_forcefully(self.stream)
            raise

    async def _handshake(self, context: ssl.SSLContext) -> None:
        ssl_stream = wrap_tls(self.stream, context, self.server_name)
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
        try:
            self._conn.tls_started()
        except RemoteProtocolError as exc:
            raise self._error(exc) from None

    async def _event(self, read_timeout: float | None = None) -> object:
        """The machine's next event, reading as long as it needs data and writing what it
        answers by itself on the way."""
        conn = self._conn
        while True:
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:
                raise self._error(exc) from None
            if out := conn.data_to_send():
                await self._write(out)
            if event is not self._NEED_DATA:
                return event
            try:
                with trio.fail_after(read_timeout or self.timeout):
                    data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.TooSlowError:
                raise UpstreamError(f"{self.server_name} did not answer in time") from None
            except (trio.BrokenResourceError, OSError) as exc:
                raise UpstreamError(f"connection to {self.server_name} lost: {exc}") from None
            try:
                conn.receive_data(bytes(data))
            except RemoteProtocolError as exc:
                raise self._error(exc) from None

    async def _write(self, data: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            raise UpstreamError(f"{self.server_name} stopped reading") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamError(f"connection to {self.server_name} lost: {exc}") from None

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


@dataclass(eq=False)
class POP3Upstream(_Upstream):
    """One POP3 session with an upstream server, in the client role."""

    conn: pop3.ClientConnection = field(default_factory=pop3.ClientConnection)
    _NEED_DATA: ClassVar[object] = pop3.NEED_DATA

    @property
    def _conn(self) -> _Machine:
        return self.conn

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
        session = cls(tcp, server_name, io_timeout)
        await session._opened(session._open(context, implicit_tls))
        return session

    async def _open(self, context: ssl.SSLContext, implicit_tls: bool) -> None:
        if implicit_tls:
            await self._handshake(context)
        await self._event()  # the greeting (the machine refuses a -ERR)
        if implicit_tls:
            return
        await self._request(pop3.Capa())
        if not isinstance(await self._request(pop3.StartTLS()), pop3.StartTLS):
            raise UpstreamError(f"{self.server_name} sent an unexpected response")
        await self._handshake(context)  # STLS went only where CAPA listed it

    async def _request(self, command: pop3.Event) -> object:
        try:
            data = self.conn.send(command)
        except RemoteProtocolError as exc:
            raise self._error(exc) from None
        await self._write(data)
        return await self._event()

    async def _reply(self, command: pop3.Event) -> pop3.Reply:
        event = await self._request(command)
        if not isinstance(event, pop3.Reply):
            raise UpstreamError(f"{self.server_name} sent an unexpected response")
        return event

    async def command(self, command: pop3.Event | str, *args: str) -> pop3.Reply:
        """A single-line command (an event such as ``Stat()``, or its words: ``"DELE", "3"``)
        and its status line."""
        if isinstance(command, str):
            command = pop3.client_command(command, *args)
        return await self._reply(command)

    async def multiline(
        self, command: pop3.Event | str, *args: str
    ) -> tuple[pop3.Reply, AsyncIterator[bytes]]:
        """A multi-line command: its status line and, if +OK, its dot-unstuffed body in
        pieces (iterate it to the end before the next command)."""
        if isinstance(command, str):
            command = pop3.client_command(command, *args)
        reply = await self._reply(command)
        return reply, self._body() if self.conn.reply_due else _empty()

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._event()
            if type(event) is pop3.BodyData:
                yield event.data
            elif type(event) is pop3.BodyEnd:
                return
            else:
                raise UpstreamError(f"{self.server_name} broke off a multi-line response")

    async def capabilities(self) -> dict[str, list[str]]:
        event = await self._request(pop3.Capa())
        assert isinstance(event, pop3.Capabilities)
        return {name: list(args) for name, args in event.capabilities.items()}

    async def uidls(
        self, msg: int | None = None, *, limit: int = pop3.UIDL_LISTING_LIMIT
    ) -> pop3.UidlListing:
        """The server's UIDLs, parsed: the listing (kept up to ``limit`` octets; over it,
        ``complete`` is False), or ``UIDL msg``."""
        event = await self._request(pop3.FetchUidls(msg, limit))
        assert isinstance(event, pop3.UidlListing)
        return event

    async def login(self, username: str, password: str) -> pop3.Reply:
        """USER/PASS, or AUTH PLAIN where the server refuses USER or the credentials do not
        fit USER and PASS lines (the machine's choice). Only ever on a TLS session."""
        if not self.tls:
            raise UpstreamError("refusing to send credentials without TLS", temporary=False)
        return await self._reply(pop3.Login(username, password, "USER"))


@dataclass(eq=False)
class SMTPUpstream(_Upstream):
    """One SMTP session with an upstream server, in the client role (the recording SMTP
    proxy): EHLO, STARTTLS unless the TLS is implicit, EHLO again, AUTH; then the commands
    and content the relay sends, one reply at a time."""

    conn: smtp.ClientConnection = field(default_factory=smtp.ClientConnection)
    final_timeout: float = 600.0  # for the reply to the end of a message
    _NEED_DATA: ClassVar[object] = smtp.NEED_DATA

    @property
    def _conn(self) -> _Machine:
        return self.conn

    @property
    def extensions(self) -> dict[str, str]:
        """EHLO keyword -> parameters, from the EHLO under TLS."""
        return self.conn.extensions

    @property
    def reply_due(self) -> bool:
        return self.conn.reply_due

    @classmethod
    async def start(
        cls,
        tcp: trio.SocketStream,
        server_name: str,
        context: ssl.SSLContext,
        *,
        implicit_tls: bool,
        io_timeout: float,
        final_timeout: float,
        helo: str,
    ) -> SMTPUpstream:
        """TLS (implicit, or STARTTLS: refused if not offered) and EHLO. Raises
        UpstreamError; on error the connection is closed."""
        session = cls(tcp, server_name, io_timeout, final_timeout=final_timeout)
        await session._opened(session._open(context, implicit_tls, helo))
        return session

    async def _open(self, context: ssl.SSLContext, implicit_tls: bool, helo: str) -> None:
        if implicit_tls:
            await self._handshake(context)
        await self.reply()  # the greeting (the machine refuses anything but 220)
        await self.command(smtp.Hello("EHLO", helo))
        if implicit_tls:
            return
        await self.send(smtp.StartTLS())  # refused unless EHLO listed STARTTLS
        if not isinstance(await self._event(), smtp.StartTLS):  # the 220, else refused
            raise UpstreamError(f"{self.server_name} sent an unexpected response")
        await self._handshake(context)
        await self.command(smtp.Hello("EHLO", helo))

    def offers(self, keyword: str) -> bool:
        return self.conn.offers(keyword)

    async def reply(self, read_timeout: float | None = None) -> smtp.Reply:
        event = await self._event(read_timeout)
        if not isinstance(event, smtp.Reply):
            raise UpstreamError(f"{self.server_name} closed the connection")
        return event

    async def command(self, command: smtp.Event) -> smtp.Reply:
        """One command (``MailFrom(...)``, ``Reset()``...) and its reply."""
        await self.send(command)
        return await self.reply()

    async def send(self, command: smtp.Event) -> None:
        """A command or a piece of content, without reading a reply (``reply_due`` says
        whether one is due)."""
        try:
            data = self.conn.send(command)
        except RemoteProtocolError as exc:
            raise self._error(exc) from None
        if data:
            await self._write(data)

    async def authenticate(self, username: str, password: str) -> smtp.Reply:
        """AUTH PLAIN, or LOGIN where the server offers only that (RFC 4954); the server's
        final reply. Only ever called on a TLS session (``start`` saw to it)."""
        if not self.tls:
            raise UpstreamError("refusing to send credentials without TLS", temporary=False)
        try:
            mechanism = self.conn.choose_mechanism()
        except RemoteProtocolError as exc:
            raise self._error(exc) from None
        return await self.command(smtp.Authenticate(mechanism, username, password))

    async def quit(self) -> None:
        """QUIT, its reply awaited briefly, and the connection closed whatever happens."""
        try:
            with trio.move_on_after(min(self.timeout, 5.0)):
                await self.command(smtp.Quit())
        except (UpstreamError, smtp.LocalProtocolError):
            pass  # QUIT cannot go now (inside DATA content): closing is enough
        finally:
            await self.aclose()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
