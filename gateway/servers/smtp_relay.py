"""The recording SMTP proxy's transactions (SPEC.md 15.4): :class:`SMTPRelay` answers an
authenticated proxy session's MAIL, RCPT and message content with the target's own replies,
so a provider's refusal reaches the client unchanged, and keeps a copy of every message the
target accepts in the gateway mailbox.

Theory of operation
-------------------
The content goes into a :class:`MessageWriter` as it arrives and upstream in runs
(``proxy.Runs``: 32 KiB, or less once they have waited 0.2 s; re-stuffed for DATA, or as
BDAT chunks when the client used BDAT and the target offers CHUNKING), the last run together
with the end of the content. After the content the upstream answers; only a 250 there
commits the copy, and the client gets that 250 only once the copy is durable. Before the end
of the content goes upstream, the copy is written but for its commit record
(``MessageWriter.prepare``), so a full disk shows before the target can accept. The one case
that cannot be made atomic: the upstream accepted, then the commit record failed. The client
then gets 451 4.3.0 (so it keeps the message and tries again, and the recipient may get it
twice), the session's audit record counts it as ``unrecorded`` and the log says so at error
level.

If storing fails while the content is still streaming or being prepared, the upstream
connection is cut before the end of the content, so the target never accepts a message the
archive does not hold; the client gets 421 4.3.0 and the session ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

import trio

from ..events import Envelope, MessageRef, now
from ..log import LogWriteError
from ..protocols.smtp import (
    AbortReason,
    BodyData,
    BodyType,
    EndOfMessage,
    MailFrom,
    RcptTo,
    Reply,
    Reset,
    StartData,
)
from ..services.archive import ArchiveError
from ..services.routing import ProxyLogin
from ..services.writer import MessageWriter
from ..store import StoreClient
from .proxy import Runs, safe_text
from .upstream import SMTPUpstream

__all__ = ["SMTPRelay"]

logger = logging.getLogger("gateway.smtp")

STORE_FAILED_CUT: Final = Reply(
    421, "4.3.0", ("Archive copy failed; the message was not relayed, closing connection",)
)
STORE_FAILED_AFTER: Final = Reply(
    451,
    "4.3.0",
    ("Target accepted the message but the archive copy failed; it was not archived",),
)
ARCHIVE_UNAVAILABLE: Final = Reply(451, "4.3.0", ("Archive mailbox unavailable, try again later",))
TARGET_CUT: Final = Reply(
    421, "4.4.2", ("Connection to the target was cut to abandon a message, closing",)
)


def _answer(reply: Reply, success: frozenset[int]) -> Reply:
    """The upstream's reply as the answer to a client's decision: unchanged, except a 2xx
    the machine cannot give there (250 stands in for it) and a reply no 2xx/4xx/5xx at all
    (the upstream is out of step: a temporary failure)."""
    if reply.code in success or 400 <= reply.code <= 599:
        return reply
    if reply.is_success:
        return Reply(250, reply.enhanced, reply.lines)
    return _unexpected(reply)


def _failure(reply: Reply) -> Reply:
    """A reply that must refuse (the target answered where only a refusal or a reply this
    code does not act on can come): a 4xx/5xx unchanged, anything else a temporary error.
    Never a 2xx: the client must not get a success for a message that was not relayed."""
    return reply if 400 <= reply.code <= 599 else _unexpected(reply)


def _unexpected(reply: Reply) -> Reply:
    return Reply(451, "4.4.0", (safe_text(f"Unexpected reply from the target: {reply.code}"),))


_ONLY_250: Final = frozenset({250})
_RCPT_OK: Final = frozenset({250, 251})


@dataclass(eq=False)
class SMTPRelay:
    """One authenticated proxy session: relays transactions to ``upstream`` and records
    every message it accepts. Methods raise UpstreamError when the target fails."""

    upstream: SMTPUpstream
    store: StoreClient
    login: ProxyLogin
    client_address: str
    client_tls: str
    helo: str = ""
    relayed: int = 0
    refused: int = 0
    unrecorded: int = 0
    stored: list[MessageRef] = field(default_factory=list)
    _mail: MailFrom | None = None
    _recipients: list[str] = field(default_factory=list)
    _writer: MessageWriter | None = None
    _data = False  # the content goes upstream as DATA (354 read); False: as BDAT
    _refusal: Reply | None = None  # the content's final answer, decided before its end
    _cut = False  # the upstream connection was cut on purpose: nothing more goes there
    _held: Runs = field(default_factory=Runs)  # content not yet sent upstream
    _verdict_due = False  # the end of the content went upstream, its reply not read yet

    @property
    def target(self) -> str:
        return self.login.target

    async def mail(self, event: MailFrom) -> Reply:
        if self._cut:
            return TARGET_CUT
        up = self.upstream
        missing = self._unsupported(event)
        if missing:
            return Reply(555, "5.5.4", (safe_text(f"{missing} is not supported by the target"),))
        body = event.body if up.offers("8BITMIME") or up.offers("BINARYMIME") else None
        size = event.size if up.offers("SIZE") else None
        command = MailFrom(event.address, size=size, body=body, smtputf8=event.smtputf8)
        reply = _answer(await up.command(command), _ONLY_250)
        if reply.is_success:
            self._mail, self._recipients = event, []
        return reply

    def _unsupported(self, event: MailFrom) -> str:
        up = self.upstream
        if event.smtputf8 and not up.offers("SMTPUTF8"):
            return "SMTPUTF8"
        if event.body is BodyType.EIGHT_BIT_MIME and not up.offers("8BITMIME"):
            return "BODY=8BITMIME"
        if event.body is BodyType.BINARY_MIME and not (
            up.offers("BINARYMIME") and up.offers("CHUNKING")
        ):
            return "BODY=BINARYMIME"
        return ""

    async def rcpt(self, address: str) -> Reply:
        reply = _answer(await self.upstream.command(RcptTo(address)), _RCPT_OK)
        if reply.is_success:
            self._recipients.append(address)
        return reply

    async def start_content(self, *, bdat: bool) -> None:
        """The client began the content (after its DATA got 354, or with its first BDAT)."""
        self._refusal, self._data = None, False
        self._held = Runs()
        try:
            self._writer = self.store.begin_message([self.login.mailbox_id])
        except ArchiveError as exc:
            logger.warning("event=smtp-proxy-archive-unavailable reason=%r", str(exc))
            self._refusal = ARCHIVE_UNAVAILABLE
            return
        if bdat and self.upstream.offers("CHUNKING"):
            await self.upstream.send(StartData(chunked=True))
            return
        reply = await self.upstream.command(StartData())
        if reply.code == 354:
            self._data = True
        else:
            self._refusal = _failure(reply)

    async def content(self, data: bytes) -> None:
        if self._refusal is not None or self._cut or self._writer is None:
            return
        try:
            await self._writer.write(data)
        except (ArchiveError, LogWriteError) as exc:
            logger.error("event=smtp-proxy-store-failed stage=content reason=%r", str(exc))
            await self._drop_writer()
            await self._cut_upstream()
            self._refusal = STORE_FAILED_CUT
            return
        if (run := self._held.add(data)) is not None:
            reply = await self._forward(run, last=False)
            if reply is not None and not reply.is_success:
                self._refusal = _failure(reply)

    async def _forward(self, data: bytes, *, last: bool) -> Reply | None:
        """A run of content upstream in one write (the client machine re-stuffs DATA
        content, with the end-of-data line if ``last``, or makes it one BDAT chunk); the
        upstream's reply where one is due (after a BDAT, or after the end of the content:
        waited for up to the upstream's ``final_timeout``)."""
        up = self.upstream
        await up.send(EndOfMessage(data) if last else BodyData(data))
        if last:
            self._verdict_due = True  # the whole message is there: the target may accept it
            return await up.reply(up.final_timeout)
        return await up.reply() if up.reply_due else None

    async def complete(self) -> Reply:
        """The client ended the content: the upstream's verdict, after the copy is durable."""
        try:
            return await self._complete()
        finally:
            await self._drop_writer()
            self._mail, self._recipients, self._data = None, [], False

    async def _complete(self) -> Reply:
        if self._refusal is not None:
            self.refused += 1
            if not self._cut:
                await self._reset()  # the upstream transaction may still be open
            return self._refusal
        writer = self._writer
        assert writer is not None
        try:
            # Everything but the commit record is written before the target may accept.
            await writer.prepare()
        except (ArchiveError, LogWriteError) as exc:
            logger.error("event=smtp-proxy-store-failed stage=prepare reason=%r", str(exc))
            await self._cut_upstream()
            self.refused += 1
            return STORE_FAILED_CUT
        try:
            reply = await self._forward(self._held.take(), last=True)
        except BaseException as exc:
            if self._verdict_due:
                # Timeout, lost connection or shutdown once the end of the content was
                # sent: the target may deliver what has no copy.
                self._unrecorded(f"no verdict from the target: {exc!r}", "")
            raise
        finally:
            self._verdict_due = False
        assert reply is not None
        if not reply.is_success:
            self.refused += 1
            return _failure(reply)
        reply = _answer(reply, _ONLY_250)  # accepted: stored, and answered 250
        self.relayed += 1
        size = writer.size
        try:
            # Accepted upstream: the copy is made even if the session is being cancelled.
            with trio.CancelScope(shield=True):
                ids = await writer.commit(self._envelope(reply))
        except (ArchiveError, LogWriteError) as exc:
            self._unrecorded(str(exc), reply.text)
            return STORE_FAILED_AFTER
        finally:
            self._writer = None
        self.stored.append(MessageRef(ids[self.login.mailbox_id], size))
        return reply

    def _unrecorded(self, reason: str, upstream_text: str) -> None:
        """A message the target accepted, or may have, without an archive copy."""
        self.unrecorded += 1
        logger.error(
            "event=smtp-proxy-unrecorded target=%s reason=%r upstream=%r",
            self.target,
            reason,
            upstream_text[:200],
        )

    async def abort(self, reason: AbortReason) -> None:
        """The client's transaction ended without a message (RSET, EHLO, size limit, EOF)."""
        in_content = self._writer is not None or self._refusal is not None
        data_open = in_content and self._data and self._refusal is None
        await self._drop_writer()
        if self._cut:
            pass
        elif data_open:
            # Over the gateway's own limit mid-content, or a BDAT transaction reset or
            # left (QUIT, EOF) while it goes upstream as DATA: there is no way to abandon
            # DATA but to cut the connection, so the target discards the partial message.
            await self._cut_upstream()
        elif reason in (AbortReason.RESET, AbortReason.SIZE_LIMIT) and self._mail is not None:
            await self._reset()  # BDAT chunks (RFC 3030 allows RSET) or no content upstream
        self._mail, self._recipients, self._refusal = None, [], None

    async def _reset(self) -> None:
        await self.upstream.command(Reset())

    async def _drop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.abort()

    async def _cut_upstream(self) -> None:
        self._cut = True
        await self.upstream.aclose()

    async def quit(self) -> None:
        if not self._cut:
            await self.upstream.quit()

    async def aclose(self) -> None:
        await self._drop_writer()
        await self.upstream.aclose()

    def _envelope(self, reply: Reply) -> Envelope:
        assert self._mail is not None
        return Envelope(
            received_at=now(),
            origin="smtp-proxy",
            mail_from=self._mail.address,
            rcpt_to=tuple(self._recipients),
            client_address=self.client_address,
            helo=self.helo,
            tls=self.client_tls,
            target=self.login.target,
            remote_user=self.login.remote_user,
            upstream_reply=safe_text(f"{reply.code} {reply.text}"),
        )
