"""The custody report (SPEC.md 8.2): every message the gateway took in, accounted for from the
control log alone: when and how it came in, every retrieval, and how it went.

Theory of operation
-------------------
:class:`Custody` folds control events, in log order. A message is *accepted* when its
witness is written (``MessagesCommitted``: the commit point, SPEC.md 6.2); its origin comes
from the record written in the same round (``MessageAccepted``: journal intake, with the
session and client address) or from the proxy session that stored it (``stored`` of
``SmtpProxySessionEnded``/``Pop3ProxySessionEnded``); the TLS version of a journal message
from its session's ``SmtpSessionEnded``. Retrievals are the ``retrieved`` refs of
``Pop3SessionProgress``/``Pop3SessionEnded`` (a TOP of the whole message is one, SPEC 14);
deletions are ``MessagesExpunged`` by who did it: a POP3 session's QUIT, an administrator (a
purge), or the gateway rolling back a commit never witnessed (not an acceptance: such a
message is not counted); and ``MailboxDeleted`` with its purged messages. ``LogCompacted``
says when a deleted message's bytes went.

Where older control-log history was archived (SPEC.md 6.8) the report covers the history
kept, from its base, and says so; a message retrieved or deleted whose acceptance is before
that start is counted apart (``before_history``), never as an exception. Pure: the caller
reads the log.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .events import (
    ROLLED_BACK,
    ControlEvent,
    LogCompacted,
    MailboxDeleted,
    MessageAccepted,
    MessageRef,
    MessagesCommitted,
    MessagesExpunged,
    Pop3ProxySessionEnded,
    Pop3SessionEnded,
    Pop3SessionProgress,
    SmtpProxySessionEnded,
    SmtpSessionEnded,
)

__all__ = ["Custody", "Finding", "MessageCustody", "Retrieval", "Totals"]


@dataclass(frozen=True, slots=True)
class Retrieval:
    at: datetime
    session_id: str
    client_address: str


@dataclass(slots=True)
class MessageCustody:
    mailbox_id: str
    message_id: str
    accepted_at: datetime
    seq: int  # its commit record's in the mailbox log
    origin: str = ""  # "journal", "smtp-proxy", "pop3-proxy"; "" when no record says
    session_id: str = ""
    client_address: str = ""
    tls: str = ""  # the TLS version of the session it came in on; "none" in the clear
    size: int = 0
    retrievals: list[Retrieval] = field(default_factory=list)
    deleted_at: datetime | None = None
    deleted_by: str = ""  # "pop3-quit", "admin", "mailbox-deleted"
    deleted_from: str = ""  # the address or actor that deleted it
    removed_at: datetime | None = None  # compaction took its bytes


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # "deleted-unretrieved", "waiting-too-long", "retrieved-from-elsewhere", ...
    mailbox_id: str
    message_id: str
    detail: str


@dataclass(slots=True)
class Totals:
    accepted: int = 0
    retrieved_and_deleted: int = 0
    waiting: int = 0
    deleted_unretrieved: int = 0


_PENDING_SESSION = 10_000  # journal sessions whose end is awaited for their TLS version


class Custody:
    """The fold of the control log into one record per accepted message copy."""

    def __init__(self) -> None:
        self.messages: dict[tuple[str, str], MessageCustody] = {}
        # Seen acting on messages accepted before the history kept: (mailbox, message).
        self.before_history: set[tuple[str, str]] = set()
        # Journal messages whose session has not ended yet: session id -> their keys.
        self._sessions: dict[str, list[tuple[str, str]]] = {}
        # Retrievals of POP3 sessions whose end (and client address) is still to come.
        self._progress: dict[str, list[tuple[str, MessageRef, datetime]]] = {}

    def apply(self, event: ControlEvent) -> None:
        match event:
            case MessagesCommitted():
                for commit in event.commits:
                    key = (commit.mailbox_id, commit.message_id)
                    if key not in self.messages:
                        self.messages[key] = MessageCustody(
                            commit.mailbox_id, commit.message_id, event.at, commit.seq
                        )
            case MessageAccepted():
                for key in zip(event.mailbox_ids, event.message_ids, strict=False):
                    found = self.messages.get(key)
                    if found is not None:
                        found.origin, found.session_id = "journal", event.session_id
                        found.client_address, found.size = event.client_address, event.size
                        self._sessions.setdefault(event.session_id, []).append(key)
                while len(self._sessions) > _PENDING_SESSION:
                    self._sessions.pop(next(iter(self._sessions)))
            case SmtpSessionEnded():
                for key in self._sessions.pop(event.session_id, ()):
                    if (found := self.messages.get(key)) is not None:
                        found.tls = _version(event.tls)
            case SmtpProxySessionEnded() | Pop3ProxySessionEnded():
                origin = "smtp-proxy" if isinstance(event, SmtpProxySessionEnded) else "pop3-proxy"
                for ref in event.stored:
                    found = self.messages.get((event.mailbox_id, ref.message_id))
                    if found is not None:
                        found.origin, found.session_id = origin, event.session_id
                        found.client_address, found.size = event.client_address, ref.size
                        found.tls = _version(event.client_tls)
            case Pop3SessionProgress():
                pending = self._progress.setdefault(event.session_id, [])
                pending.extend((event.mailbox_id, ref, event.at) for ref in event.retrieved)
            case Pop3SessionEnded():
                held = self._progress.pop(event.session_id, [])
                held += [(event.mailbox_id, ref, event.at) for ref in event.retrieved]
                for mailbox_id, ref, at in held:
                    key = (mailbox_id, ref.message_id)
                    found = self.messages.get(key)
                    if found is None:
                        self.before_history.add(key)
                        continue
                    found.retrievals.append(Retrieval(at, event.session_id, event.client_address))
            case MessagesExpunged():
                if event.reason == ROLLED_BACK:
                    for message_id in event.message_ids:  # never acknowledged: not a message
                        self.messages.pop((event.mailbox_id, message_id), None)
                    return
                who = {"pop3": "pop3-quit", "admin": "admin", "token": "admin"}.get(
                    event.actor.kind, event.actor.kind
                )
                for message_id in event.message_ids:
                    self._deleted(event.mailbox_id, message_id, event.at, who, event.actor.address)
            case MailboxDeleted():
                for found in self.messages.values():
                    if found.mailbox_id == event.mailbox_id and found.deleted_at is None:
                        found.deleted_at, found.deleted_by = event.at, "mailbox-deleted"
                        found.deleted_from = event.actor.address or event.actor.kind
            case LogCompacted():
                for message_id in event.message_ids:
                    found = self.messages.get((event.mailbox_id, message_id))
                    if found is not None and found.removed_at is None:
                        found.removed_at = event.at

    def _deleted(self, mailbox_id: str, message_id: str, at: datetime, who: str, by: str) -> None:
        found = self.messages.get((mailbox_id, message_id))
        if found is None:
            self.before_history.add((mailbox_id, message_id))
        elif found.deleted_at is None:
            found.deleted_at, found.deleted_by, found.deleted_from = at, who, by

    # -- the report ------------------------------------------------------------------------------

    def selected(
        self, mailbox_id: str | None = None, since: datetime | None = None
    ) -> list[MessageCustody]:
        return [
            m
            for m in self.messages.values()
            if (mailbox_id is None or m.mailbox_id == mailbox_id)
            and (since is None or m.accepted_at >= since)
        ]

    @staticmethod
    def totals(messages: Iterable[MessageCustody]) -> Totals:
        totals = Totals()
        for m in messages:
            totals.accepted += 1
            if m.deleted_at is None:
                totals.waiting += 1
            elif m.retrievals:
                totals.retrieved_and_deleted += 1
            else:
                totals.deleted_unretrieved += 1
        return totals

    @staticmethod
    def exceptions(
        messages: Iterable[MessageCustody],
        *,
        now: datetime,
        max_waiting: float | None = None,
        allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
    ) -> list[Finding]:
        found: list[Finding] = []
        for m in messages:
            if m.deleted_at is not None and not m.retrievals:
                found.append(
                    Finding(
                        "deleted-unretrieved",
                        m.mailbox_id,
                        m.message_id,
                        f"deleted {m.deleted_at.isoformat()} by {m.deleted_by} "
                        f"({m.deleted_from or '-'}) without ever having been retrieved",
                    )
                )
            if m.deleted_at is None and max_waiting is not None:
                waited = (now - m.accepted_at).total_seconds()
                if waited > max_waiting:
                    found.append(
                        Finding(
                            "waiting-too-long",
                            m.mailbox_id,
                            m.message_id,
                            f"waiting since {m.accepted_at.isoformat()} ({waited / 3600:.1f} h)",
                        )
                    )
            if allowed:
                for retrieval in m.retrievals:
                    if not _within(retrieval.client_address, allowed):
                        found.append(
                            Finding(
                                "retrieved-from-elsewhere",
                                m.mailbox_id,
                                m.message_id,
                                f"retrieved {retrieval.at.isoformat()} from "
                                f"{retrieval.client_address} (session {retrieval.session_id})",
                            )
                        )
            if not m.origin:
                found.append(
                    Finding(
                        "origin-unknown",
                        m.mailbox_id,
                        m.message_id,
                        "witnessed, but no record says how it came in",
                    )
                )
        return found


def _version(tls: str) -> str:
    return tls.split(" ", 1)[0] if tls else "none"


def _within(
    address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)
