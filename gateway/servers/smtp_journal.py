"""SMTP journal intake (SPEC.md 12.2): the job of an SMTP session until it authenticates.

Theory of operation
-------------------
The only decisions made here are the ones the machine pauses for: whether a recipient is a
gateway mailbox (``services.journal``), and when a message may get its 250 — only once it is
durable in every accepting mailbox (``MessageWriter.commit``). A message streams into every
accepting mailbox as it arrives, after the trace field (RFC 5321 §4.4).

Timeouts follow RFC 5321 §4.5.3.2: ``command_timeout`` waiting for a command,
``data_timeout`` while message content streams in. Each stored message gets
``MessageAccepted``; refusals are counted, by stage and reply, into the session's one
``SmtpSessionEnded`` (a refused recipient also spends the machine's bad command budget, so a
client guessing recipients is cut off). A quiet session (no message, no AUTH) over the audit
rate is folded into the listener's ``ConnectionsSummarized`` instead (``servers.limits``).
None of them holds an address or a byte of content.

AUTH is the recording proxy's login (``servers.smtp_proxy``): a proxy login hands the session
over to the relay for the rest of its life.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from ..events import Envelope, MessageAccepted, SmtpSessionEnded, now
from ..log import LogWriteError
from ..protocols.smtp import (
    Authenticate,
    BodyData,
    ConnectionClosed,
    Hello,
    MailFrom,
    MessageAborted,
    MessageComplete,
    Quit,
    RcptTo,
    Reply,
    StartData,
    StartTLS,
    replies,
)
from ..services.archive import ArchiveError, InsufficientStorage
from ..services.journal import check_recipient, received_header
from ..services.writer import MessageWriter
from .limits import refusal_counts
from .session import Hook, Session
from .smtp_proxy import authenticate

if TYPE_CHECKING:
    from .smtp import SMTPServer

__all__ = ["JournalIntake"]

logger = logging.getLogger("gateway.smtp")


class JournalIntake:
    """The job of an SMTP session that has not authenticated: messages into the journal."""

    def __init__(self, server: SMTPServer, session: Session) -> None:
        self.server = server
        self.session = session
        self.store = server.store
        self.config = server.config
        self.helo = ""
        self.helo_kind = ""
        self.mail_from = ""
        self.smtputf8 = False
        self.recipients: list[str] = []  # accepted gateway mailbox ids, in order
        self.recipient_addresses: list[str] = []
        self.writer: MessageWriter | None = None
        self.writer_failed = False
        self.no_room = False  # the store refused for want of room: 452 4.3.1 at the end
        self.trace_octets = 0  # the Received: field's, which the size limit does not count
        self.messages = 0
        self.bytes = 0
        self.rejected = 0
        self.refusals: Counter[tuple[str, int, str]] = Counter()  # (stage, code, enhanced)
        self.login_attempted = False
        self.hooks: dict[type, Hook] = {
            Hello: self._hello,
            MailFrom: self._mail,
            RcptTo: self._rcpt,
            StartData: self._start_data,
            BodyData: self._body,
            MessageComplete: self._complete,
            MessageAborted: self._abort,
            StartTLS: self._start_tls,
            Authenticate: self._authenticate,
            Quit: self._quit,
            ConnectionClosed: self._closed,
        }

    async def _hello(self, event: Hello) -> None:
        self.helo, self.helo_kind = event.domain, event.kind
        self._reset_transaction()

    async def _mail(self, event: MailFrom) -> None:
        self._reset_transaction()
        self.mail_from, self.smtputf8 = event.address, event.smtputf8
        session = self.session
        await session.stream.send_all(session.conn.send(replies.SENDER_OK))

    async def _rcpt(self, event: RcptTo) -> None:
        address = event.address
        decision = check_recipient(self.store, self.config.mail_domain, address)
        if decision.accepted:
            assert decision.mailbox_id is not None
            if decision.mailbox_id not in self.recipients:
                self.recipients.append(decision.mailbox_id)
            self.recipient_addresses.append(address)
        else:
            self.rejected += 1
            logger.info(
                "event=smtp-rcpt-refused session=%s client=%s code=%d enhanced=%s",
                self.session.session_id,
                self.session.peer,
                decision.code,
                decision.enhanced,
            )
            self._refused("rcpt", decision.code, decision.enhanced)
        reply = Reply(decision.code, decision.enhanced, (decision.text,))
        session = self.session
        await session.stream.send_all(session.conn.send(reply))

    async def _authenticate(self, event: Authenticate) -> None:
        self.login_attempted = True  # the session has an SmtpLogin: never folded
        session = self.session
        reply = await authenticate(self.server, session, event, self.helo)
        await session.stream.send_all(session.conn.send(reply))

    async def _quit(self, event: Quit) -> bool:
        self.session.outcome = "quit"
        return True

    async def _closed(self, event: ConnectionClosed) -> bool:
        self.session.outcome = str(event.reason)
        return True

    def _reset_transaction(self) -> None:
        self.mail_from, self.smtputf8 = "", False
        self.recipients, self.recipient_addresses = [], []

    async def _start_data(self, event: StartData) -> None:
        session = self.session
        session.read_timeout = self.config.smtp.data_timeout
        self.writer_failed = self.no_room = False
        try:
            self.writer = self.store.begin_message(self.recipients)
        except ArchiveError:
            # A mailbox was suspended or deleted since RCPT: the content is read and dropped,
            # and the sender gets a temporary error at the end.
            self.writer = None
            self.writer_failed = True
            return
        header = received_header(
            helo=self.helo,
            client_address=session.peer,
            hostname=self.config.hostname,
            protocol=self._protocol(),
            session_id=session.session_id,
            tls=session.tls,
            recipient=self.recipient_addresses[0] if len(self.recipient_addresses) == 1 else None,
            when=now(),
        )
        self.trace_octets = len(header)
        try:
            await self.writer.write(header, allowance=self.trace_octets)
        except (ArchiveError, LogWriteError) as exc:
            await self._write_failed(self.writer, exc)

    async def _body(self, event: BodyData) -> None:
        writer = self.writer
        if writer is None or self.writer_failed:
            return
        try:
            await writer.write(event.data, allowance=self.trace_octets)
        except (ArchiveError, LogWriteError) as exc:
            await self._write_failed(writer, exc)

    async def _write_failed(self, writer: MessageWriter, exc: Exception) -> None:
        logger.warning("event=store-failed session=%s reason=%r", self.session.session_id, str(exc))
        self.writer_failed = True
        self.no_room = isinstance(exc, InsufficientStorage)
        await writer.abort()
        self.writer = None

    async def _complete(self, event: MessageComplete) -> None:
        session = self.session
        session.read_timeout = self.config.smtp.command_timeout
        writer, self.writer = self.writer, None
        if writer is None and self.no_room:  # under the store's free-space floor (13.8)
            self.rejected += 1
            self._refused("data", 452, "4.3.1")
            reply = replies.INSUFFICIENT_STORAGE
        elif writer is None:
            self.rejected += 1
            self._refused("data", 451, "4.3.0")
            reply = replies.LOCAL_ERROR
        else:
            size = writer.size
            accepted = MessageAccepted(
                at=now(),
                actor=session.actor,
                session_id=session.session_id,
                client_address=session.peer,
                mailbox_ids=tuple(writer.message_ids),
                message_ids=tuple(writer.message_ids.values()),
                size=size,
            )
            try:
                # The acceptance's record goes in with the message's witness, in its round.
                ids = await writer.commit(self._envelope(), accepted=accepted)
            except (LogWriteError, ArchiveError) as exc:
                logger.warning(
                    "event=store-failed session=%s reason=%r", session.session_id, str(exc)
                )
                self.rejected += 1
                self._refused("data", 452, "4.3.1")
                reply = replies.INSUFFICIENT_STORAGE
            else:
                self.messages += 1
                self.bytes += size
                stored = ",".join(ids.values())
                logger.info(
                    "event=smtp-message-stored session=%s client=%s size=%d mailboxes=%d ids=%s",
                    session.session_id,
                    session.peer,
                    size,
                    len(ids),
                    stored,
                )
                reply = Reply(250, "2.0.0", (f"Ok: stored as {stored}",))
        await session.stream.send_all(session.conn.send(reply))

    async def _abort(self, event: MessageAborted) -> None:
        self.session.read_timeout = self.config.smtp.command_timeout
        if self.writer is not None:
            await self.writer.abort()
            self.writer = None
        self._reset_transaction()

    async def _start_tls(self, event: StartTLS) -> None:
        session = self.session
        await session.start_tls()
        version, _, cipher = session.tls.partition(" ")
        session.conn.tls_started(version, cipher)
        self.helo = ""

    def _protocol(self) -> str:
        """The "with" keyword of the Received field (RFC 3848, RFC 6531 §3.7.3)."""
        if self.helo_kind == "HELO":
            return "SMTP"
        base = "UTF8SMTP" if self.smtputf8 else "ESMTP"
        return base + ("S" if self.session.tls else "")

    def _envelope(self) -> Envelope:
        return Envelope(
            received_at=now(),
            origin="journal",
            mail_from=self.mail_from,
            rcpt_to=tuple(self.recipient_addresses),
            client_address=self.session.peer,
            helo=self.helo,
            tls=self.session.tls,
        )

    def _refused(self, stage: str, code: int, enhanced: str) -> None:
        """Counted for the session's record: one record per refusal let a client grow the
        control log by 227 octets with each 40-octet RCPT line."""
        self.refusals[(stage, code, enhanced)] += 1

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.abort()

    async def audit(self, seconds: float) -> None:
        server, session = self.server, self.session
        if not (self.messages or self.login_attempted) and not server.quiet.allow():
            server.tally.folded(session.listener.name, session.peer, self.refusals)
            return
        logger.info(
            "event=smtp-session session=%s listener=%s client=%s tls=%r messages=%d bytes=%d "
            "rejected=%d outcome=%s seconds=%.2f",
            session.session_id,
            session.listener.name,
            session.peer,
            session.tls,
            self.messages,
            self.bytes,
            self.rejected,
            session.outcome,
            seconds,
        )
        await self.store.append_control(
            SmtpSessionEnded(
                at=now(),
                actor=session.actor,
                session_id=session.session_id,
                listener=session.listener.name,
                client_address=session.peer,
                tls=session.tls,
                helo=self.helo[:255],
                messages=self.messages,
                bytes=self.bytes,
                rejected=self.rejected,
                outcome=session.outcome,
                seconds=round(seconds, 3),
                refusals=refusal_counts(self.refusals),
            ),
            durable=False,
        )
