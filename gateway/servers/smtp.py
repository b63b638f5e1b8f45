"""The SMTP listener's sessions: journal intake over RFC 5321, and the recording SMTP proxy
for sessions that authenticate with a proxy login.

Theory of operation
-------------------
Each connection is one :class:`~.session.Session` driving the sans-IO
``protocols.smtp.ServerConnection``: it writes what the machine hands back and asks a job
for every decision. A session starts as journal intake (``servers.smtp_journal``: recipients
are gateway mailboxes, a message gets its 250 once durable in every one) and, after an AUTH
with a proxy login ``remote_user%target%mailbox_id``, is a recording proxy session
(``servers.smtp_proxy``) for the rest of its life. Reads wait ``command_timeout`` for a
command and ``data_timeout`` while message content streams in (RFC 5321 §4.5.3.2); a timeout
is answered 421 4.4.2, a shutdown 421 4.3.2.
"""

from __future__ import annotations

import trio

from ..config import Config, ListenerConfig, TLSMode
from ..protocols.smtp import NEED_DATA, PAUSED, Reply, ServerConnection, SMTPSettings, replies
from ..services.throttle import LoginGuard
from ..store import StoreClient
from ..tls import TLSContextHolder, describe_tls
from .limits import AuditRate, TrafficTally
from .session import Session, Wire
from .smtp_journal import JournalIntake

__all__ = ["SMTPServer"]

RECEIVE_SIZE = 64 * 1024

TOO_MANY_SESSIONS = Reply(421, "4.7.0", ("Too many connections, try again later",))

SMTP = Wire(
    kind="smtp",
    need_data=NEED_DATA,
    paused=PAUSED,
    receive_size=RECEIVE_SIZE,
    timeout=replies.TIMEOUT,
    shutting_down=replies.SHUTTING_DOWN,
    streaming=lambda conn: False,  # every reply is whole: the 421 can always go
)


class SMTPServer:
    def __init__(
        self,
        config: Config,
        store: StoreClient,
        tls: TLSContextHolder,
        *,
        tally: TrafficTally | None = None,
        quiet: AuditRate | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.tls = tls
        self.logins = LoginGuard(max_failures=config.smtp.max_auth_failures)  # proxy logins
        # Where quiet sessions over the audit rate are counted (the gateway's, shared).
        self.tally = tally if tally is not None else TrafficTally()
        self.quiet = quiet if quiet is not None else AuditRate()

    async def handle(self, stream: trio.abc.Stream, listener: ListenerConfig, peer: str) -> None:
        """One session; the gateway's accept loop counted it against the session limits
        already (and refused it with TOO_MANY_SESSIONS if over them)."""
        smtp = self.config.smtp
        tls = describe_tls(stream)
        conn = ServerConnection(
            SMTPSettings(
                hostname=self.config.hostname,
                max_message_size=smtp.max_message_size,
                max_recipients=smtp.max_recipients,
                tls_active=bool(tls),
                starttls_offered=listener.tls == TLSMode.STARTTLS and not tls,
                require_tls=smtp.require_tls and listener.tls == TLSMode.STARTTLS,
                auth_offered=True,
                bare_newline=smtp.bare_newline,
                bad_command_budget=smtp.bad_command_budget,
            )
        )
        session = Session(
            SMTP, conn, stream, listener, peer, tls, self.tls, read_timeout=smtp.command_timeout
        )
        await session.run(JournalIntake(self, session))
