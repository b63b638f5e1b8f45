"""Projections: the state the gateway serves, folded from the logs. Pure; no I/O.

The same folds run in the server (on start-up, then event by event as it appends) and in
``gateway verify`` (from the files alone), which is how verify checks that what is on disk
agrees with what the events say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from ..events import (
    AdminAccountCreated,
    AdminCredentialsMigrated,
    AdminPasswordChanged,
    AdminSessionEnded,
    AdminSessionStarted,
    ApiTokenCreated,
    ApiTokenRevoked,
    ControlEvent,
    LogCompacted,
    LogDamaged,
    LogTailTruncated,
    MailboxAlarmCleared,
    MailboxAlarmRaised,
    MailboxCreated,
    MailboxDeleted,
    MailboxKeyReset,
    MailboxKeyRewrapped,
    MailboxStatus,
    MailboxUpdated,
    MessageAccepted,
    MessageLogAnchored,
    MessagesCommitted,
    MessagesExpunged,
    Pop3ProxySessionEnded,
    Pop3SessionEnded,
    Pop3SessionProgress,
    SmtpProxySessionEnded,
    StoreSpaceLow,
    StoreSpaceRestored,
)

__all__ = [
    "AdminSession",
    "AdminState",
    "ApiToken",
    "ControlState",
    "MailboxInfo",
    "decode_control_state",
    "encode_control_state",
]


@dataclass(slots=True)
class MailboxInfo:
    mailbox_id: str
    name: str
    description: str
    status: MailboxStatus
    key_id: str
    wrap_id: str
    created_at: datetime
    updated_at: datetime
    # Its own backlog alarm thresholds (SPEC.md 13.8); None: the configuration's.
    max_waiting_age: float | None = None
    max_waiting_bytes: int | None = None
    expect_mail_every: float | None = None


@dataclass(slots=True)
class ApiToken:
    token_id: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    # Keyed with the token key (SPEC.md 13.2). Empty for a token recorded before digests
    # were: it logs nothing in until the migration of <data>/admin/credentials names it.
    digest: bytes


@dataclass(slots=True)
class AdminSession:
    session_id: str
    started_at: datetime
    expires_at: datetime
    digest: bytes


@dataclass(slots=True)
class AdminState:
    """The admin account, its API tokens and its open sessions (SPEC.md 13.2). No secret:
    the password's verifier is the file the log names by ``credential_id``, and the digests
    are useless without the token key."""

    created_at: datetime | None = None  # None: no account yet
    # The current password's verifier in <data>/admin/password; empty while the account is
    # still the one in <data>/admin/credentials of an earlier version.
    credential_id: str = ""
    tokens: dict[str, ApiToken] = field(default_factory=dict)
    sessions: dict[str, AdminSession] = field(default_factory=dict)

    def apply(self, event: ControlEvent) -> None:
        match event:
            case AdminAccountCreated():
                self.created_at, self.credential_id = event.at, event.credential_id
                self.tokens.clear()
                self.sessions.clear()
            case AdminPasswordChanged():
                self.credential_id = event.credential_id
                self.sessions.clear()
            case AdminCredentialsMigrated():
                self.created_at = self.created_at or event.at
                self.credential_id = event.credential_id
                self.tokens.clear()
                for token in event.tokens:
                    self.tokens[token.token_id] = ApiToken(
                        token.token_id, token.name, token.created_at, token.expires_at, token.digest
                    )
                self.sessions.clear()
            case ApiTokenCreated():
                self.tokens[event.token_id] = ApiToken(
                    event.token_id, event.name, event.at, event.expires_at, event.digest
                )
            case ApiTokenRevoked():
                self.tokens.pop(event.token_id, None)
            case AdminSessionStarted():
                # Expired sessions go as new ones come: the state stays as small as the
                # sessions open within one session lifetime.
                for session_id, session in list(self.sessions.items()):
                    if session.expires_at <= event.at:
                        del self.sessions[session_id]
                # A session opened with a password changed meanwhile never starts.
                if event.credential_id == self.credential_id:
                    self.sessions[event.session_id] = AdminSession(
                        event.session_id, event.at, event.expires_at, event.digest
                    )
            case AdminSessionEnded():
                self.sessions.pop(event.session_id, None)
            case _:
                pass


@dataclass(slots=True)
class ControlState:
    """Mailboxes, expunged message ids and compaction cuts, the admin account, from the
    control log."""

    mailboxes: dict[str, MailboxInfo] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    # Per mailbox: its backlog alarms raised and not cleared (SPEC.md 13.8).
    alarms: dict[str, set[str]] = field(default_factory=dict)
    # Under [store] min_free_bytes since the last StoreSpaceLow: intake refuses (13.8).
    store_space_low: bool = False
    expunged: dict[str, set[str]] = field(default_factory=dict)
    compactions: dict[str, list[LogCompacted]] = field(default_factory=dict)
    # Per mailbox: segment first seq -> the confirmed generation of its file (log.REMOVED
    # for a removed segment). The segment log opens the files these name.
    cuts: dict[str, dict[int, int]] = field(default_factory=dict)
    # Per mailbox: when mail last arrived (journal or proxy) and was last retrieved over POP3.
    last_delivery: dict[str, datetime] = field(default_factory=dict)
    last_retrieval: dict[str, datetime] = field(default_factory=dict)
    truncations: int = 0
    events: int = 0
    # Commit witnesses (SPEC.md 6.2). Per mailbox whose commits are witnessed: every
    # witnessed message id -> (seq, chain) of its commit record, and the high-water mark
    # (seq, chain) up to which its log holds acknowledged records. A mailbox missing from
    # ``witnessed`` predates witnesses and has not been anchored yet.
    witnessed: dict[str, dict[str, tuple[int, bytes]]] = field(default_factory=dict)
    acknowledged: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # Per mailbox anchored when it predated witnesses: (seq, chain) of its log's end then.
    anchors: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    # Damage found at open, per mailbox, oldest first: the alarm an operator sees.
    damage: dict[str, list[LogDamaged]] = field(default_factory=dict)
    admin: AdminState = field(default_factory=AdminState)
    # Saved in the control log's recovery point (SPEC.md 6.7), per open mailbox: every
    # commit record before this seq was settled (witnessed, or rolled back and expunged), so
    # one not expunged was witnessed; ``witnessed`` holds only the witnesses of commits from
    # there on. Empty when the whole control log was read (``witnessed`` has them all).
    settled: dict[str, int] = field(default_factory=dict)
    # Every key id issued to each mailbox, retired ones too (verify: a message sealed to a
    # key the control log never issued is a problem).
    key_ids: dict[str, set[str]] = field(default_factory=dict)
    # The mailboxes whose open message index keeps their witnesses and expunged ids: for
    # them ``witnessed`` and ``expunged`` keep none per message (a million-message store must
    # not hold them twice). Empty for verify, and for a server's mailboxes until each opens.
    indexed: set[str] = field(default_factory=set)

    def forget_messages(self, mailbox_id: str) -> None:
        """The mailbox just opened: its index knows its witnesses and expunged ids from now
        on, so the state stops keeping them by message (and its ``settled`` seq)."""
        self.indexed.add(mailbox_id)
        if mailbox_id in self.witnessed:
            self.witnessed[mailbox_id].clear()
        self.expunged.pop(mailbox_id, None)
        self.settled.pop(mailbox_id, None)

    def apply(self, event: ControlEvent) -> None:
        """Fold one event. Events that do not fit the state (an update of an unknown mailbox)
        are the verify tool's business; here they are ignored rather than fatal, so a gateway
        always starts."""
        self.events += 1
        match event:
            case MailboxCreated():
                self.mailboxes[event.mailbox_id] = MailboxInfo(
                    mailbox_id=event.mailbox_id,
                    name=event.name,
                    description=event.description,
                    status=MailboxStatus.ACTIVE,
                    key_id=event.key_id,
                    wrap_id=event.wrap_id,
                    created_at=event.at,
                    updated_at=event.at,
                )
                self.deleted.discard(event.mailbox_id)
                self.key_ids.setdefault(event.mailbox_id, set()).add(event.key_id)
                if event.witnessed:
                    self.witnessed[event.mailbox_id] = {}
            case MailboxUpdated():
                if box := self.mailboxes.get(event.mailbox_id):
                    box.name, box.description = event.name, event.description
                    box.status, box.updated_at = event.status, event.at
                    box.max_waiting_age = event.max_waiting_age
                    box.max_waiting_bytes = event.max_waiting_bytes
                    box.expect_mail_every = event.expect_mail_every
            case MailboxAlarmRaised():
                self.alarms.setdefault(event.mailbox_id, set()).add(event.alarm)
            case MailboxAlarmCleared():
                self.alarms.get(event.mailbox_id, set()).discard(event.alarm)
            case StoreSpaceLow():
                self.store_space_low = True
            case StoreSpaceRestored():
                self.store_space_low = False
            case MailboxKeyRewrapped():
                if box := self.mailboxes.get(event.mailbox_id):
                    box.wrap_id, box.updated_at = event.wrap_id, event.at
            case MailboxKeyReset():
                self.key_ids.setdefault(event.mailbox_id, set()).add(event.key_id)
                if box := self.mailboxes.get(event.mailbox_id):
                    box.key_id, box.wrap_id, box.updated_at = event.key_id, event.wrap_id, event.at
            case MailboxDeleted():
                self.mailboxes.pop(event.mailbox_id, None)
                self.alarms.pop(event.mailbox_id, None)
                self.indexed.discard(event.mailbox_id)
                self.expunged.pop(event.mailbox_id, None)
                self.cuts.pop(event.mailbox_id, None)
                self.last_delivery.pop(event.mailbox_id, None)
                self.last_retrieval.pop(event.mailbox_id, None)
                self.witnessed.pop(event.mailbox_id, None)
                self.acknowledged.pop(event.mailbox_id, None)
                self.anchors.pop(event.mailbox_id, None)
                self.damage.pop(event.mailbox_id, None)
                self.deleted.add(event.mailbox_id)
            case MessagesExpunged():
                if event.mailbox_id not in self.indexed:
                    self.expunged.setdefault(event.mailbox_id, set()).update(event.message_ids)
            case LogCompacted():
                self.compactions.setdefault(event.mailbox_id, []).append(event)
                self.cuts.setdefault(event.mailbox_id, {})[event.segment] = event.generation
                vouched = self.witnessed.get(event.mailbox_id, {})
                for message_id in event.message_ids:
                    # Gone from the log by record: nothing left for a witness to vouch for.
                    vouched.pop(message_id, None)
            case LogTailTruncated():
                self.truncations += 1
            case MessagesCommitted():
                for commit in event.commits:
                    if commit.mailbox_id in self.mailboxes:  # the commit point is the delivery
                        self.last_delivery[commit.mailbox_id] = event.at
                    witnesses = self.witnessed.get(commit.mailbox_id)
                    if witnesses is None:
                        continue
                    if commit.mailbox_id not in self.indexed:
                        witnesses[commit.message_id] = (commit.seq, commit.chain)
                    mark = self.acknowledged.get(commit.mailbox_id)
                    if mark is None or commit.seq > mark[0]:
                        self.acknowledged[commit.mailbox_id] = (commit.seq, commit.chain)
            case MessageLogAnchored():
                if event.mailbox_id in self.mailboxes:
                    self.witnessed.setdefault(event.mailbox_id, {})
                    self.anchors[event.mailbox_id] = (event.seq, event.chain)
                    if event.seq >= 0:
                        self.acknowledged[event.mailbox_id] = (event.seq, event.chain)
            case LogDamaged():
                self.damage.setdefault(event.mailbox_id, []).append(event)
                witnesses = self.witnessed.get(event.mailbox_id, {})
                for message_id, (seq, _chain) in list(witnesses.items()):
                    if seq >= event.first_lost_seq:
                        del witnesses[message_id]
                if event.first_lost_seq > 0:
                    self.acknowledged[event.mailbox_id] = (event.first_lost_seq - 1, event.chain)
                else:
                    self.acknowledged.pop(event.mailbox_id, None)
            case MessageAccepted():
                for mailbox_id in event.mailbox_ids:
                    self.last_delivery[mailbox_id] = event.at
            case Pop3ProxySessionEnded() | SmtpProxySessionEnded():
                if event.stored and event.mailbox_id in self.mailboxes:
                    self.last_delivery[event.mailbox_id] = event.at
            case Pop3SessionEnded() | Pop3SessionProgress():
                if event.retrieved and event.mailbox_id in self.mailboxes:
                    self.last_retrieval[event.mailbox_id] = event.at
            case (
                AdminAccountCreated()
                | AdminPasswordChanged()
                | AdminCredentialsMigrated()
                | ApiTokenCreated()
                | ApiTokenRevoked()
                | AdminSessionStarted()
                | AdminSessionEnded()
            ):
                self.admin.apply(event)
            case _:
                pass


_STATE_VERSION = 2  # 2: key_ids


class _SavedState(msgspec.Struct):
    version: int
    state: ControlState


def encode_control_state(state: ControlState) -> bytes:
    """The control-log projection as a recovery point carries it (SPEC.md 6.7)."""
    return msgspec.msgpack.encode(_SavedState(_STATE_VERSION, state))


def decode_control_state(data: bytes | memoryview) -> ControlState:
    """Raises ValueError for bytes that are not a saved state of this version."""
    try:
        saved = msgspec.msgpack.decode(data, type=_SavedState)
    except msgspec.DecodeError as exc:
        raise ValueError(f"control state: {exc}") from None
    if saved.version != _STATE_VERSION:
        raise ValueError(f"control state version {saved.version} is not known")
    return saved.state
