"""Connections to the proxies' upstream servers: resolve, check every address against the
target policy, connect to an address that passed, and speak TLS with the certificate checked.
The client roles on top (:class:`POP3Upstream`, :class:`SMTPUpstream`) read replies with the
protocol machines' own reply readers and log in only once TLS is up, so a password never
crosses an unencrypted link (SPEC.md 15.1).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..protocols import smtp
from ..protocols._sasl import encode, plain_response
from ..protocols.pop3 import (
    COMMAND_LINE_LIMIT,
    NEED_DATA,
    BodyData,
    BodyEnd,
    ConnectionClosed,
    Continuation,
    ProtocolError,
    Reply,
    ReplyReader,
    format_command,
)
from ..services.routing import RoutingError, TargetPolicy
from ..tls import use_aead_only

__all__ = ["POP3Upstream", "SMTPUpstream", "UpstreamError", "open_upstream"]

RECEIVE_SIZE = 64 * 1024


class _Reader(Protocol):
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> object: ...


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


@dataclass(eq=False)
class _Upstream:
    """What both client roles share: TLS toward ``server_name``, timed reads into the
    protocol's reply reader and timed writes, every failure an UpstreamError."""

    stream: trio.abc.Stream
    server_name: str
    timeout: float
    tls: str = field(default="", init=False)

    def _reader(self) -> _Reader:
        raise NotImplementedError

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

    async def _event(self, read_timeout: float | None = None) -> object:
        reader = self._reader()
        while True:
            try:
                event = reader.next_event()
            except (ProtocolError, smtp.ProtocolError) as exc:
                raise UpstreamError(f"{self.server_name} broke the protocol: {exc}") from None
            if event is not NEED_DATA and event is not smtp.NEED_DATA:
                return event
            try:
                with trio.fail_after(read_timeout or self.timeout):
                    data = await self.stream.receive_some(RECEIVE_SIZE)
            except trio.TooSlowError:
                raise UpstreamError(f"{self.server_name} did not answer in time") from None
            except (trio.BrokenResourceError, OSError) as exc:
                raise UpstreamError(f"connection to {self.server_name} lost: {exc}") from None
            reader.receive_data(bytes(data))

    async def _send(self, data: bytes) -> None:
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

    reader: ReplyReader = field(default_factory=ReplyReader)

    def _reader(self) -> _Reader:
        return self.reader

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

    async def _reply(self) -> Reply:
        event = await self._event()
        if isinstance(event, ConnectionClosed):
            raise UpstreamError(f"{self.server_name} closed the connection")
        if not isinstance(event, Reply):
            raise UpstreamError(f"{self.server_name} sent an unexpected response")
        return event

    async def command(self, verb: str, *args: str) -> Reply:
        """A single-line command and its status line."""
        return await self._exchange(format_command(verb, *args))

    async def _exchange(self, line: bytes) -> Reply:
        self.reader.expect()
        await self._send(line)
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
                if words := line.split():
                    capabilities[_keyword(words[0])] = words[1:]
        return capabilities

    async def login(self, username: str, password: str) -> Reply:
        """USER/PASS, or AUTH PLAIN where the server refuses USER or the credentials do not
        fit USER and PASS lines (a space in the username, a line break, over 255 octets).
        Only ever called on a TLS session (``start`` saw to it)."""
        if not self.tls:
            raise UpstreamError("refusing to send credentials without TLS", temporary=False)
        try:
            lines = format_command("USER", username), format_command("PASS", password)
        except ValueError:  # SASL carries them whatever they hold
            return await self._auth_plain(plain_response(username, password))
        if not (await self._exchange(lines[0])).ok:
            return await self._auth_plain(plain_response(username, password))
        return await self._exchange(lines[1])

    async def _auth_plain(self, response: str) -> Reply:
        """AUTH PLAIN with the response on the command line where it fits in 255 octets,
        else after the server's "+" (RFC 5034 §4)."""
        self.reader.expect()
        line = f"AUTH PLAIN {response}\r\n".encode()
        initial = len(line) <= COMMAND_LINE_LIMIT
        await self._send(line if initial else b"AUTH PLAIN\r\n")
        event = await self._event()
        if isinstance(event, Continuation) and not initial:
            await self._send(response.encode() + b"\r\n")
            event = await self._event()
        if isinstance(event, Continuation):  # a challenge where none belongs: cancel
            await self._send(b"*\r\n")
            return await self._reply()
        if isinstance(event, Reply):
            return event
        raise UpstreamError(f"{self.server_name} sent an unexpected response to AUTH")


@dataclass(eq=False)
class SMTPUpstream(_Upstream):
    """One SMTP session with an upstream server, in the client role (the recording SMTP
    proxy): EHLO, STARTTLS unless the TLS is implicit, EHLO again, AUTH; then whatever
    commands and content the relay sends, one reply at a time."""

    reader: smtp.ReplyReader = field(default_factory=smtp.ReplyReader)
    extensions: dict[str, str] = field(default_factory=dict)  # EHLO keyword -> parameters
    final_timeout: float = 600.0  # for the reply to the end of a message

    def _reader(self) -> _Reader:
        return self.reader

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
        try:
            await session._open(context, implicit_tls, helo)
        except BaseException:
            await trio.aclose_forcefully(session.stream)
            raise
        return session

    async def _open(self, context: ssl.SSLContext, implicit_tls: bool, helo: str) -> None:
        if implicit_tls:
            await self._handshake(context)
        greeting = await self.reply()
        if greeting.code != 220:
            raise UpstreamError(
                f"{self.server_name} refused the session: {greeting.code} {greeting.text}",
                temporary=greeting.code < 500,
            )
        await self._ehlo(helo)
        if implicit_tls:
            return
        if "STARTTLS" not in self.extensions:
            raise UpstreamError(
                f"{self.server_name} does not offer STARTTLS; "
                "the password is not sent in the clear",
                temporary=False,
            )
        reply = await self.command(smtp.format_command("STARTTLS"))
        if reply.code != 220:
            raise UpstreamError(f"{self.server_name} refused STARTTLS: {reply.code} {reply.text}")
        if self.reader.discard_buffered():
            # RFC 3207 §5: what came with the 220 was sent in the clear; never act on it.
            raise UpstreamError(f"{self.server_name} sent data after its STARTTLS reply")
        self.reader = smtp.ReplyReader()
        await self._handshake(context)
        await self._ehlo(helo)

    async def _ehlo(self, helo: str) -> None:
        reply = await self.command(smtp.format_command("EHLO", helo))
        if reply.code != 250:
            raise UpstreamError(f"{self.server_name} refused EHLO: {reply.code} {reply.text}")
        self.extensions = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(" ")
            self.extensions[_keyword(keyword)] = params

    def offers(self, keyword: str) -> bool:
        return keyword in self.extensions

    async def reply(self, read_timeout: float | None = None) -> smtp.Reply:
        event = await self._event(read_timeout)
        if not isinstance(event, smtp.Reply):
            raise UpstreamError(f"{self.server_name} closed the connection")
        return event

    async def command(self, line: bytes) -> smtp.Reply:
        """One command line (from the smtp writers) and its reply."""
        await self._send(line)
        return await self.reply()

    async def send(self, data: bytes) -> None:
        """Message content, already in its wire form."""
        await self._send(data)

    async def authenticate(self, username: str, password: str) -> smtp.Reply:
        """AUTH PLAIN, or LOGIN where the server offers only that (RFC 4954); the server's
        final reply. Only ever called on a TLS session (``start`` saw to it)."""
        if not self.tls:
            raise UpstreamError("refusing to send credentials without TLS", temporary=False)
        mechanisms = [_keyword(m) for m in self.extensions.get("AUTH", "").split()]
        if "PLAIN" in mechanisms:
            response = plain_response(username, password)
            reply = await self.command(smtp.format_command("AUTH", f"PLAIN {response}"))
        elif "LOGIN" in mechanisms:
            reply = await self.command(smtp.format_command("AUTH", "LOGIN"))
            for answer in (username, password):
                if reply.code != 334:
                    break
                reply = await self.command(smtp.format_command(encode(answer)))
        else:
            raise UpstreamError(
                f"{self.server_name} offers neither AUTH PLAIN nor AUTH LOGIN", temporary=False
            )
        if reply.code == 334:  # a challenge where none belongs: give up the exchange
            reply = await self.command(smtp.format_command("*"))
        return reply

    async def quit(self) -> None:
        """QUIT, its reply awaited briefly, and the connection closed whatever happens."""
        try:
            with trio.move_on_after(min(self.timeout, 5.0)):
                await self.command(smtp.format_command("QUIT"))
        except UpstreamError:
            pass
        finally:
            await self.aclose()


def _keyword(word: str) -> str:
    """A capability or mechanism name, upper-cased in ASCII only (as ``ascii_upper``)."""
    return word.upper() if word.isascii() else word


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
