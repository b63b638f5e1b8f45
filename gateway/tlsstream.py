"""The gateway's TLS stream: :class:`ssl.SSLObject` over a pair of memory BIOs, driven so that
TLS costs about what it costs in C.

Why not :class:`trio.SSLStream`: ``SSLObject.read`` gives back one TLS record per call, and
trio's stream hands each record to its caller as one ``receive_some``, through its retry
machinery (locks that checkpoint, a conflict detector, a context manager per socket call).
Dovecot and Postfix send 4 KiB records, so a 50 KiB message came in as a dozen
``receive_some`` calls, each also a pass through the protocol machine above it. Here one
``receive_some``:

1. reads the plaintext the SSLObject can already make (records left in the incoming BIO by
   an earlier socket read): one C call per record and nothing else per record;
2. only when there is none, reads the socket once (up to :data:`TRANSPORT_RECEIVE_SIZE`),
   puts all of it into the incoming BIO and goes back to 1;
3. returns everything it got (up to ``max_bytes``) as one piece.

``send_all`` encrypts the whole buffer (``SSLObject.write`` cuts it into 16 KiB records) and
writes the outgoing BIO with one socket write (more only if the socket buffer fills). Over a
:class:`trio.SocketStream` the socket is read and written directly (a non-blocking syscall,
then ``wait_readable``/``wait_writable`` only if it would block), as trio's socket layer does
but without its wrappers; over any other stream (tests) through the stream's own methods. No
cancel scope per call; the internal locks cost nothing when free. The one exception the hot
path used to pay per call, ``SSLWantReadError`` (building it is most of an empty read), is
skipped when the incoming BIO is known to be empty.

Contract, as trio's streams: one task at a time may send and one at a time may receive (a
second gets :exc:`trio.BusyResourceError`); a sender and a receiver may run at once. Whatever
the SSLObject writes while reading (TLS 1.3 key update answers; a TLS 1.2 renegotiation) goes
out before the receiver waits for more input, in order with the sender's records: every
transport write holds the send turn and drains the outgoing BIO under it, so BIO order is
wire order. A server's TLS 1.3 session tickets, written when its handshake completes, are held
back until the next write (as trio does: a client that sends and closes at once would
otherwise get a reset, and lose what it sent).

End of stream, as trio's ``https_compatible=False``: the peer's close_notify is an end of
stream (``b""``, again on every later call); a TCP close without it (a ragged EOF, or a
truncation attack) raises :exc:`trio.BrokenResourceError` whose ``__cause__`` is the
:exc:`ssl.SSLEOFError`. Plaintext that came before an error is returned first; the error is
raised by the next call. A cancelled ``receive_some`` loses nothing (it is cancelled only
before it decrypts anything; bytes read from the socket wait in the BIO); a cancelled or
failed transport write breaks the stream, since an unknown part of a record went out.

Handshake failures (including the client's certificate verification) raise
:exc:`trio.BrokenResourceError` from the :exc:`ssl.SSLError`; callers bound
:meth:`TLSStream.do_handshake` with their own timeout. ``aclose`` sends close_notify without
waiting for the peer's (bounded by :data:`CLOSE_NOTIFY_SECONDS`; skipped when another task is
sending, or when cancelled, as by :func:`trio.aclose_forcefully`), then closes the transport.

STARTTLS: the stream reads the socket only from when it is made, and the SMTP and POP3
machines drop any cleartext that came with the command (``tls_started()``), so nothing a
client pipelined after STARTTLS/STLS is read as part of the TLS session.
"""

from __future__ import annotations

import contextlib
import errno
import os
import ssl
import threading
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, overload

import trio
from trio.lowlevel import (
    ParkingLot,
    cancel_shielded_checkpoint,
    checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_writable,
)

if TYPE_CHECKING:
    from ssl import _PeerCertRetDictType

__all__ = [
    "CLOSE_NOTIFY_SECONDS",
    "TRANSPORT_RECEIVE_SIZE",
    "TLSStream",
    "is_tls",
    "wrap_client",
    "wrap_server",
]

# Ciphertext read from the socket at once: more than a loopback or LAN socket usually holds
# after one wake-up (16 records of 16 KiB, or 64 of Dovecot's 4 KiB).
TRANSPORT_RECEIVE_SIZE = 256 * 1024
# The same over a transport that is not a socket (tests), which makes a new object of the
# size asked for every time: above 128 KiB, glibc maps and unmaps it each time.
STREAM_RECEIVE_SIZE = 64 * 1024
# Plaintext returned by one receive_some(None). A socket read brings at most
# TRANSPORT_RECEIVE_SIZE, so this bounds only what was left over from earlier reads.
DEFAULT_RECEIVE_SIZE = 256 * 1024
# The most plaintext one TLS record carries (RFC 8446 §5.1, RFC 5246 §6.2.1). Each
# SSLObject.read returns at most one record, and allocates what it is asked for.
RECORD_SIZE = 16 * 1024
# How long aclose may spend sending close_notify before it just closes the socket.
CLOSE_NOTIFY_SECONDS = 1.0

_OK, _BROKEN, _CLOSED = 0, 1, 2
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


_buffers = threading.local()


def _read_buffer() -> memoryview:
    """This thread's socket read buffer (see TLSStream._socket_fill)."""
    try:
        view: memoryview = _buffers.view
    except AttributeError:
        view = _buffers.view = memoryview(bytearray(TRANSPORT_RECEIVE_SIZE))
    return view


class _Turn:
    """A strict FIFO mutex that is free to take when nobody holds it (trio.Lock checkpoints
    and registers its owner on every acquire). Callers checkpoint on their own."""

    __slots__ = ("_held", "_waiting")

    def __init__(self) -> None:
        self._held = False
        self._waiting = ParkingLot()

    @property
    def held(self) -> bool:
        return self._held

    async def take(self) -> None:
        if not self._held:
            self._held = True
            return
        await self._waiting.park()  # give_back hands the turn over: _held stays True

    def give_back(self) -> None:
        if self._waiting:
            self._waiting.unpark(count=1)
        else:
            self._held = False


class TLSStream(trio.abc.Stream):
    """TLS over ``transport_stream`` (see the module docstring). Make one with
    :func:`wrap_server` or :func:`wrap_client`, then call :meth:`do_handshake` under a timeout."""

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport_stream
        # Over a socket, read and write it directly (see the module docstring).
        self._socket = (
            transport_stream.socket if isinstance(transport_stream, trio.SocketStream) else None
        )
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._state = _OK
        self._handshook = False
        self._handshaking = _Turn()
        self._send_turn = _Turn()  # every transport write, and the outgoing BIO read before it
        self._receive_turn = _Turn()  # every transport read
        self._fills = 0  # transport reads so far: a task that waited for the turn checks it
        self._drained = False  # the last read emptied the incoming BIO: the next must fill
        self._held_back = b""  # a TLS 1.3 server's session tickets, until the next write
        self._sending = False
        self._receiving = False
        self._deferred: BaseException | None = None  # raised by the next receive_some

    # -- what describe_tls, the proxies and the admin client read ---------------------------

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._ssl

    @property
    def server_side(self) -> bool:
        return self._ssl.server_side

    def _after_handshake(self, name: str) -> None:
        if not self._handshook:
            raise trio.NeedHandshakeError(f"call do_handshake() before calling {name!r}")

    def version(self) -> str | None:
        self._after_handshake("version")
        return self._ssl.version()

    def cipher(self) -> tuple[str, str, int] | None:
        self._after_handshake("cipher")
        return self._ssl.cipher()

    @overload
    def getpeercert(self, binary_form: Literal[False] = False) -> _PeerCertRetDictType | None: ...
    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...
    def getpeercert(self, binary_form: bool = False) -> _PeerCertRetDictType | bytes | None:
        self._after_handshake("getpeercert")
        return self._ssl.getpeercert(binary_form)

    def selected_alpn_protocol(self) -> str | None:
        self._after_handshake("selected_alpn_protocol")
        return self._ssl.selected_alpn_protocol()

    # -- handshake -----------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake (once; a second call, or a call from another task while it
        runs, waits for it). Raises trio.BrokenResourceError from the ssl error."""
        self._check_state()
        if self._handshook:
            await checkpoint()
            return
        await self._handshaking.take()
        try:
            if self._handshook:
                return
            self._check_state()
            await self._handshake()
        except BaseException:
            self._state = _BROKEN
            raise
        finally:
            self._handshaking.give_back()

    async def _handshake(self) -> None:
        ssl_object = self._ssl
        while True:
            try:
                ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                await self._exchange()
                continue
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            break
        if ssl_object.server_side and ssl_object.version() == "TLSv1.3":
            # All that can be left is session tickets: hold them back (module docstring).
            self._held_back = self._outgoing.read()
        elif self._outgoing.pending:
            await self._flush()
        self._handshook = True

    # -- receiving -----------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            if self._deferred is not None:
                self._state = _BROKEN
                await checkpoint()
                raise self._deferred
            self._check_state()
            if not self._handshook:
                await self.do_handshake()
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            elif max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            # Cancelled here or in _fill at the latest: never once plaintext is taken out.
            await checkpoint_if_cancelled()
            return await self._receive(max_bytes)
        finally:
            self._receiving = False

    async def _receive(self, max_bytes: int) -> bytes | bytearray:
        read = self._ssl.read
        incoming = self._incoming
        chunks: list[bytes] = []
        got = 0
        waited = False
        while True:
            if self._drained and not incoming.pending:
                data = None  # read() would raise SSLWantReadError: skip building it
            else:
                try:
                    data = read(min(max_bytes - got, RECORD_SIZE))
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLError as exc:
                    error = trio.BrokenResourceError(f"TLS connection broken: {exc}")
                    error.__cause__ = exc
                    if got:
                        self._deferred = error
                        break
                    self._state = _BROKEN
                    raise error from exc
            if data is None:
                if got:
                    break
                await self._exchange()  # what was written while reading, the peer may wait for
                waited = True
                continue
            if not data:  # the peer's close_notify; read() says so again next time
                break
            chunks.append(data)
            got += len(data)
            if got >= max_bytes:
                break
            if not incoming.pending and not self._ssl.pending():
                # Without read-ahead OpenSSL takes exactly one record at a time from the
                # BIO, so nothing complete is left: the next call goes to the socket first.
                self._drained = True
                break
        if not waited:
            await cancel_shielded_checkpoint()
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def _exchange(self) -> None:
        """OpenSSL wants to read: send what it has written first (the peer may be waiting
        for it), then one transport read."""
        if self._outgoing.pending:
            await self._flush()
        await self._fill()

    async def _fill(self) -> None:
        """One transport read into the incoming BIO. If another task is reading the transport
        (a sender whose write needs a renegotiation to finish), wait for it and return: its
        read may have brought what we need."""
        turn = self._receive_turn
        fills = self._fills
        await turn.take()
        try:
            if self._fills != fills:
                await checkpoint()
                return
            if self._socket is not None:
                await self._socket_fill(self._socket)
            else:
                try:
                    data = await self.transport_stream.receive_some(STREAM_RECEIVE_SIZE)
                except trio.BrokenResourceError:
                    self._state = _BROKEN
                    raise
                if data:
                    self._incoming.write(data)
                else:
                    self._incoming.write_eof()
            self._drained = False
            self._fills += 1
        finally:
            turn.give_back()

    async def _socket_fill(self, sock: trio.socket.SocketType) -> None:
        """``sock.recv`` into the incoming BIO without trio's wrappers: try at once, wait
        only if it would block. Cancellable only before anything is read. It reads into one
        buffer per thread, copied into the BIO before any checkpoint: ``os.read`` of 256 KiB
        would make (and page-fault) a fresh 256 KiB object for every read, even of 6 octets
        (17 us against 2.5 us here), and a buffer per stream would cost 256 KiB per idle
        connection."""
        await checkpoint_if_cancelled()
        view = _read_buffer()
        waited = False
        while True:
            fd = sock.fileno()  # -1 once closed: never read a descriptor number reused since
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                size = os.readv(fd, (view,))
            except BlockingIOError:
                await wait_readable(fd)
                waited = True
                continue
            except OSError as exc:
                raise self._socket_error(exc) from exc
            break
        if size:
            self._incoming.write(view[:size])
        else:
            self._incoming.write_eof()
        if not waited:
            await cancel_shielded_checkpoint()

    # -- sending -------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            self._check_state()
            if not self._handshook:
                await self.do_handshake()
            if not data:  # SSLObject.write(b"") would be an error
                await checkpoint()
                return
            await checkpoint_if_cancelled()  # nothing is encrypted for a cancelled caller
            view = memoryview(data)
            while view:
                try:
                    written = self._ssl.write(view)
                except ssl.SSLWantReadError:
                    # Only mid-renegotiation (TLS 1.2, client side): push it along.
                    await self._exchange()
                    continue
                except ssl.SSLError as exc:
                    self._state = _BROKEN
                    raise trio.BrokenResourceError(f"TLS connection broken: {exc}") from exc
                view = view[written:]
            await self._flush()
        finally:
            self._sending = False

    async def _flush(self) -> None:
        """Write the outgoing BIO (after any held-back tickets) to the transport, holding the
        send turn, so what leaves the BIO first goes on the wire first."""
        turn = self._send_turn
        await turn.take()
        try:
            out = self._outgoing.read()
            if self._held_back:
                out = self._held_back + out
                self._held_back = b""
            if not out:  # another task sent it while we waited for the turn
                await checkpoint()
                return
            try:
                if self._socket is not None:
                    await self._socket_send(self._socket, out)
                else:
                    await self.transport_stream.send_all(out)
            except BaseException:
                # An unknown part of a record went out: nothing more can be sent.
                self._state = _BROKEN
                raise
        finally:
            turn.give_back()

    async def _socket_send(self, sock: trio.socket.SocketType, data: bytes) -> None:
        """``send_all`` without trio's wrappers: write at once, wait only when the socket
        buffer is full."""
        view = memoryview(data)
        waited = False
        while view:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                await wait_writable(fd)
                waited = True
                continue
            except OSError as exc:
                raise self._socket_error(exc) from exc
            view = view[sent:]
        if not waited:
            await cancel_shielded_checkpoint()

    def _socket_error(self, exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
        """As trio's SocketStream translates socket errors."""
        if exc.errno in _CLOSED_ERRNOS:
            return trio.ClosedResourceError("the socket was closed")
        self._state = _BROKEN
        return trio.BrokenResourceError(f"socket connection broken: {exc}")

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            self._check_state()
            await self._send_turn.take()
            try:
                await self.transport_stream.wait_send_all_might_not_block()
            finally:
                self._send_turn.give_back()
        finally:
            self._sending = False

    # -- closing -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """close_notify (best effort, bounded, never waiting for the peer's), then close the
        transport. Cancelled (as by trio.aclose_forcefully), it just closes the transport."""
        if self._state == _CLOSED:
            await checkpoint()
            return
        send_close_notify = self._state == _OK and self._handshook
        self._state = _CLOSED
        try:
            if send_close_notify and not self._send_turn.held:
                await self._send_turn.take()  # free: this does not wait
                try:
                    await self._close_notify()
                finally:
                    self._send_turn.give_back()
        finally:
            await trio.aclose_forcefully(self.transport_stream)

    async def _close_notify(self) -> None:
        await checkpoint_if_cancelled()
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # the close_notify is in the BIO; the peer's is not waited for
        except ssl.SSLError:
            return
        out = self._held_back + self._outgoing.read()
        self._held_back = b""
        if not out:
            return
        # The peer may have closed first: legal, and nothing is lost.
        with (
            trio.move_on_after(CLOSE_NOTIFY_SECONDS),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self.transport_stream.send_all(out)

    def _check_state(self) -> None:
        if self._state == _OK:
            return
        if self._state == _BROKEN:
            raise trio.BrokenResourceError("TLS stream is broken")
        raise trio.ClosedResourceError("TLS stream was closed")


def wrap_server(stream: trio.abc.Stream, context: ssl.SSLContext) -> TLSStream:
    """The server side of TLS over ``stream`` (implicit TLS, or after STARTTLS/STLS). Call
    ``await tls.do_handshake()`` under a timeout before using it."""
    return TLSStream(stream, context, server_side=True)


def wrap_client(
    stream: trio.abc.Stream, context: ssl.SSLContext, server_hostname: str
) -> TLSStream:
    """The client side of TLS over ``stream``: SNI ``server_hostname`` (not sent for an IP
    address) and, when ``context`` checks host names, the certificate checked against it
    during :meth:`TLSStream.do_handshake`."""
    return TLSStream(stream, context, server_side=False, server_hostname=server_hostname)


def is_tls(stream: trio.abc.Stream) -> TypeGuard[TLSStream | trio.SSLStream[Any]]:
    """Whether ``stream`` is TLS: ours, or trio's (tests, and callers not moved yet). Both
    have ``transport_stream``, ``version()``, ``cipher()`` and ``getpeercert()``."""
    return isinstance(stream, (TLSStream, trio.SSLStream))
