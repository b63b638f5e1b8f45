"""The events the gateway records: the vocabulary every other part speaks.

Every event is a frozen msgspec Struct in a tagged union (the tag field ``type`` holds the class
name), encoded as MessagePack into an EVENT record of a segment log. Two logs exist:

* the control log: mailboxes, admin and audit events. Metadata only, never message content,
  passwords or keys (not even wrapped ones: those live in each mailbox's key file, so a
  password change really retires the old wrap).
* one message log per mailbox: ``MessageStored`` commit records (the message's chunks are
  CHUNK records before it).

Schema evolution (SPEC.md, "Events"): records written today must replay in ten years. A field
is never removed, renamed or given another type; new fields always have defaults; a new event
is a new class with a new tag. Readers skip tags they do not know (``decode_*`` returns None),
so an older gateway can still verify a newer log's framing and chain.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = [
    "ROLLED_BACK",
    "Actor",
    "AdminAccountCreated",
    "AdminCredentialsMigrated",
    "AdminLogin",
    "AdminPasswordChanged",
    "AdminRequestFailed",
    "AdminSessionEnded",
    "AdminSessionStarted",
    "ApiTokenCreated",
    "ApiTokenRecord",
    "ApiTokenRevoked",
    "CertificateIssued",
    "CertificateRenewalFailed",
    "CheckpointSigned",
    "CommitWitness",
    "CompactionGap",
    "ConnectionsSummarized",
    "ControlEvent",
    "DeliveryRefused",
    "Envelope",
    "Event",
    "GatewayStarted",
    "GatewayStopped",
    "LogCompacted",
    "LogDamaged",
    "LogTailTruncated",
    "MailboxAlarmCleared",
    "MailboxAlarmRaised",
    "MailboxCreated",
    "MailboxDeleted",
    "MailboxKeyReset",
    "MailboxKeyRewrapped",
    "MailboxStatus",
    "MailboxUpdated",
    "MessageAbandoned",
    "MessageAccepted",
    "MessageEvent",
    "MessageLogAnchored",
    "MessageRef",
    "MessageStored",
    "MessagesCommitted",
    "MessagesExpunged",
    "Pop3Login",
    "Pop3ProxySessionEnded",
    "Pop3SessionEnded",
    "Pop3SessionProgress",
    "RefusalCount",
    "SmtpLogin",
    "SmtpProxySessionEnded",
    "SmtpSessionEnded",
    "StoreSpaceLow",
    "StoreSpaceRestored",
    "decode_control_event",
    "decode_envelope",
    "decode_message_event",
    "encode_envelope",
    "encode_event",
    "event_to_json",
    "now",
]


def now() -> datetime:
    return datetime.now(UTC)


class MailboxStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who caused an event: ``system`` (the gateway itself), ``admin`` (the admin account
    through the API or console) or ``token`` (an API token, ``name`` its name), ``cli`` (a local
    command on the data folder), or a protocol session (``smtp``, ``pop3``), with the peer
    address where there is one."""

    kind: str
    name: str = ""
    address: str = ""


SYSTEM = Actor(kind="system")


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag=True):
    at: datetime
    actor: Actor = SYSTEM


# -- control log ---------------------------------------------------------------------------


class MailboxCreated(Event, frozen=True, kw_only=True):
    mailbox_id: str
    name: str
    description: str = ""
    key_id: str  # hex of the first 16 bytes of SHA-256 of the public key
    wrap_id: str  # hex of the first 16 bytes of SHA-256 of the key file
    # True from the version on that witnesses every commit in the control log
    # (MessagesCommitted): every message of this mailbox must be accounted for by a witness.
    witnessed: bool = False


class MailboxUpdated(Event, frozen=True, kw_only=True):
    mailbox_id: str
    name: str
    description: str
    status: MailboxStatus
    # Its own backlog alarm thresholds (SPEC.md 13.8): None follows the configuration's
    # [alarms], 0 turns that alarm off. Records before them have none.
    max_waiting_age: float | None = None
    max_waiting_bytes: int | None = None
    expect_mail_every: float | None = None


class MailboxKeyRewrapped(Event, frozen=True, kw_only=True):
    """Password changed with the old password known: same key pair, new wrap. Every stored
    message stays readable."""

    mailbox_id: str
    key_id: str
    wrap_id: str


class MailboxKeyReset(Event, frozen=True, kw_only=True):
    """Password reset without the old password: a new key pair. Messages sealed to the old
    key (``unreadable_messages`` of them) can never be decrypted again."""

    mailbox_id: str
    old_key_id: str
    key_id: str
    wrap_id: str
    unreadable_messages: int
    unreadable_bytes: int


class MailboxDeleted(Event, frozen=True, kw_only=True):
    mailbox_id: str
    purged_messages: int = 0


class MessagesExpunged(Event, frozen=True, kw_only=True):
    """Messages deleted (by the archive over POP3, or by an admin purge). They stop being
    served at once; compaction reclaims their bytes later."""

    mailbox_id: str
    message_ids: tuple[str, ...]
    bytes: int
    # Empty for a deletion; ROLLED_BACK for commits that were never witnessed (a crash
    # between a message's commit and its witness, or a commit refused at its witness).
    reason: str = ""


ROLLED_BACK = "rolled-back"


class CommitWitness(msgspec.Struct, frozen=True):
    """One mailbox copy of a message: the seq and chain value of its commit record."""

    mailbox_id: str
    message_id: str
    seq: int
    chain: bytes


class MessagesCommitted(Event, frozen=True, kw_only=True):
    """The witness of a message's commit, appended (durable) after its commit records are
    durable in every mailbox and before anyone is told it is stored: the commit point. A
    message exists when this event names it; a commit record without one was never
    acknowledged and is rolled back on open."""

    commits: tuple[CommitWitness, ...]


class MessageLogAnchored(Event, frozen=True, kw_only=True):
    """A mailbox log that predates commit witnesses, adopted as it was found: its records up
    to ``seq`` (ending on ``chain``) are acknowledged without a witness each."""

    mailbox_id: str
    seq: int
    chain: bytes


class LogDamaged(Event, frozen=True, kw_only=True):
    """Opening a mailbox log found its end damaged or missing where the control log had
    witnessed commits: the damaged bytes were moved aside (``moved_to``, relative to the data
    folder; empty when nothing was left to move), the log continues after record
    ``first_lost_seq - 1`` (``chain``), and the witnessed messages listed are lost."""

    mailbox_id: str
    segment: str
    offset: int
    dropped_bytes: int
    first_lost_seq: int
    chain: bytes
    lost_message_ids: tuple[str, ...]
    moved_to: str
    reason: str


class CompactionGap(msgspec.Struct, frozen=True):
    first_seq: int
    last_seq: int
    chain: bytes  # the chain value after last_seq, as it was before removal


class LogCompacted(Event, frozen=True, kw_only=True):
    """Compaction removed records of expunged messages from one segment of a mailbox log
    (``removed_segment``: the whole segment file went). The chain values keep the log
    verifiable across the cut."""

    mailbox_id: str
    segment: int
    generation: int  # of the compacted segment file; -1 when the segment was removed whole
    gaps: tuple[CompactionGap, ...]
    removed_segment: bool
    message_ids: tuple[str, ...]
    bytes_before: int
    bytes_after: int


class LogTailTruncated(Event, frozen=True, kw_only=True):
    """Opening a log found a torn or garbage tail (a write cut short by a crash) and cut it
    off. Nothing acknowledged is ever in such a tail."""

    log: str  # "control" or a mailbox id
    segment: str
    offset: int
    dropped_bytes: int


class GatewayStarted(Event, frozen=True, kw_only=True):
    version: str
    node: str = ""  # the node's name ([store] node); empty in records before it


class GatewayStopped(Event, frozen=True, kw_only=True):
    reason: str = ""
    node: str = ""


class SmtpSessionEnded(Event, frozen=True, kw_only=True):
    """One SMTP session, at its end. Metadata only: no sender or recipient addresses (they
    are sealed with each message), no content."""

    session_id: str
    listener: str
    client_address: str
    tls: str = ""  # "TLSv1.3 TLS_AES_256_GCM_SHA384" when encrypted
    helo: str = ""
    messages: int = 0
    bytes: int = 0
    rejected: int = 0  # recipients and messages refused
    outcome: str = ""  # "quit", "closed", "timeout", "too-many-errors", "shutdown", ...
    seconds: float = 0.0
    # The refusals of ``rejected`` by stage and reply (one DeliveryRefused each before).
    refusals: tuple[RefusalCount, ...] = ()


class Pop3Login(Event, frozen=True, kw_only=True):
    """A POP3 login, successful or not. ``mailbox_id`` is set when the username named a
    mailbox id or address (whether or not it exists); never the password."""

    session_id: str
    client_address: str
    mailbox_id: str = ""
    mechanism: str = ""  # "USER" or "PLAIN"
    success: bool
    reason: str = ""  # "wrong credentials", "throttled", "in use", ...


class MessageRef(msgspec.Struct, frozen=True):
    message_id: str
    size: int


class Pop3SessionEnded(Event, frozen=True, kw_only=True):
    """One POP3 session, at its end: what was retrieved (RETR, or a TOP that sent the whole
    message, in order) and what its QUIT deleted (empty unless the deletions became
    durable)."""

    session_id: str
    listener: str
    client_address: str
    tls: str = ""
    mailbox_id: str = ""
    retrieved: tuple[MessageRef, ...] = ()
    deleted: tuple[MessageRef, ...] = ()
    outcome: str = ""  # "quit", "eof", "timeout", "too_many_errors", "shutdown", "dropped"
    seconds: float = 0.0


class Pop3SessionProgress(Event, frozen=True, kw_only=True):
    """Part of a POP3 session's record written before its end, when it retrieved or deleted
    more messages than one record holds (REFS_PER_RECORD): its ``Pop3SessionEnded`` has the
    rest. The session's retrievals are those of all its records, in order."""

    session_id: str
    mailbox_id: str = ""
    retrieved: tuple[MessageRef, ...] = ()
    deleted: tuple[MessageRef, ...] = ()


class Pop3ProxySessionEnded(Event, frozen=True, kw_only=True):
    """One recording POP3 proxy session, at its end (never the password)."""

    session_id: str
    listener: str
    client_address: str
    mailbox_id: str
    target: str
    remote_user: str
    client_tls: str = ""
    upstream_tls: str = ""
    retrieved: int = 0  # RETR responses relayed
    stored: tuple[MessageRef, ...] = ()  # copies made (a message seen before is not stored)
    outcome: str = ""  # "quit", "eof", "timeout", "upstream-error", "store-failed", ...
    seconds: float = 0.0


class SmtpLogin(Event, frozen=True, kw_only=True):
    """An SMTP AUTH (a recording-proxy login), successful or not; never the password.
    ``mailbox_id`` is set when the username was a proxy login naming one."""

    session_id: str
    client_address: str
    mailbox_id: str = ""
    target: str = ""
    mechanism: str = ""  # "PLAIN" or "LOGIN"
    success: bool
    reason: str = ""  # "upstream login failed", "throttled", "no such mailbox", ...


class SmtpProxySessionEnded(Event, frozen=True, kw_only=True):
    """One recording SMTP proxy session, at its end (never the password, no addresses)."""

    session_id: str
    listener: str
    client_address: str
    mailbox_id: str
    target: str
    remote_user: str
    client_tls: str = ""
    upstream_tls: str = ""
    relayed: int = 0  # messages the upstream accepted (its 250 after the content)
    refused: int = 0  # messages the upstream refused, or the proxy gave up on
    stored: tuple[MessageRef, ...] = ()  # copies made, one per relayed message
    unrecorded: int = 0  # accepted upstream, but the copy failed (the client got 451)
    outcome: str = ""  # "quit", "eof", "timeout", "upstream-error", "store-failed", ...
    seconds: float = 0.0


class MessageAccepted(Event, frozen=True, kw_only=True):
    """A message became durable in one or more mailboxes (one id per mailbox) and got 250."""

    session_id: str
    client_address: str
    mailbox_ids: tuple[str, ...]
    message_ids: tuple[str, ...]
    size: int


class DeliveryRefused(Event, frozen=True, kw_only=True):
    """A recipient or a message refused, with the reply given."""

    session_id: str
    client_address: str
    stage: str  # "rcpt", "data", "session"
    code: int
    enhanced: str = ""
    mailbox_id: str = ""  # when the recipient was a gateway mailbox (suspended, damaged)


# -- admin API (SPEC.md 13): who did what from where; never a password, token or hash ------
#
# The admin account, its tokens and its sessions are projections of these events (SPEC.md
# 13.2). The control log is published to audit subscribers, so what lets anyone log in stays
# out of it: the password's Argon2id hash is kept in <data>/admin/password under the
# ``credential_id`` named here, and a token's ``digest`` is keyed with the token key in
# <data>/admin/token-key (useless without it, and no way back to a 256-bit secret with it).


class AdminAccountCreated(Event, frozen=True, kw_only=True):
    """The admin account was set up (on first start, or again when its password's verifier
    was gone); ``source`` says where its password came from: ``generated`` (printed once on
    the terminal), ``environment`` or ``file``. Every API token and session ends."""

    source: str
    # The verifier of its password in <data>/admin/password: a random id, no function of the
    # password. Empty in logs from before it (the hash was in <data>/admin/credentials).
    credential_id: str = ""


class AdminLogin(Event, frozen=True, kw_only=True):
    """A login to the admin API, successful or not (``reason`` says why not). The actor is
    who logged in (or tried to), with the client address."""

    method: str  # "password", "token" (an API token) or "session" (a session token)
    success: bool
    reason: str = ""


class AdminPasswordChanged(Event, frozen=True, kw_only=True):
    """The admin password changed: every session ends."""

    credential_id: str = ""  # the new password's verifier (empty before verifiers had ids)


class ApiTokenCreated(Event, frozen=True, kw_only=True):
    token_id: str
    name: str
    expires_at: datetime | None = None
    # HMAC-SHA256 under the token key of the token's secret (SPEC.md 13.2); empty in logs
    # from before it (those tokens were checked against <data>/admin/credentials).
    digest: bytes = b""


class ApiTokenRevoked(Event, frozen=True, kw_only=True):
    token_id: str


class ApiTokenRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An API token as ``AdminCredentialsMigrated`` carries it."""

    token_id: str
    name: str
    created_at: datetime
    expires_at: datetime | None = None
    digest: bytes  # keyed, as in ApiTokenCreated


class AdminCredentialsMigrated(Event, frozen=True, kw_only=True):
    """The ``<data>/admin/credentials`` file of an earlier version, taken into the log on the
    first start after an upgrade: the password's hash moved to the verifier ``credential_id``
    and ``tokens`` are every API token the file held (they replace what earlier events said:
    the file was the truth). Every session ends."""

    credential_id: str
    tokens: tuple[ApiTokenRecord, ...] = ()


class AdminSessionStarted(Event, frozen=True, kw_only=True):
    """A password login opened a session: its token works until ``expires_at``, a logout
    (``AdminSessionEnded``) or a change of the password it was opened with (``credential_id``),
    across restarts."""

    session_id: str
    expires_at: datetime
    credential_id: str
    digest: bytes  # keyed, as in ApiTokenCreated


class AdminSessionEnded(Event, frozen=True, kw_only=True):
    session_id: str
    reason: str = ""  # "logout"


class AdminRequestFailed(Event, frozen=True, kw_only=True):
    """An admin request that was refused, with the error given (successful ones are their own
    events: MailboxCreated, MailboxUpdated, ... with the admin as actor)."""

    op: str
    mailbox_id: str = ""
    code: str
    message: str


# -- traffic not recorded one by one (SPEC.md 4.1, 12.1) -----------------------------------


class RefusalCount(msgspec.Struct, frozen=True):
    """How many refusals a session (or a summary) gave with one reply."""

    stage: str  # "rcpt", "data"
    code: int
    enhanced: str
    count: int


class ConnectionsSummarized(Event, frozen=True, kw_only=True):
    """What one listener did over ``seconds`` up to ``at`` without a record of its own:
    connections refused at accept (the session limits), and sessions folded in here instead
    of their own session record once such quiet sessions came faster than the audit rate. At
    most one per listener a minute, so hostile traffic cannot grow the control log faster."""

    listener: str
    seconds: float
    refused: int = 0  # connections refused at accept
    sessions: int = 0  # quiet sessions folded in (no message, no login attempt)
    clients: int = 0  # distinct client addresses among all of them (counted up to 10,000)
    refusals: tuple[RefusalCount, ...] = ()  # refusals within the folded sessions


class MailboxAlarmRaised(Event, frozen=True, kw_only=True):
    """A mailbox crossed one of its backlog thresholds (SPEC.md 13.8); recorded once per
    crossing, until a ``MailboxAlarmCleared`` of the same alarm."""

    mailbox_id: str
    alarm: str  # "age": its oldest message waits; "size": octets wait; "quiet": no new mail
    value: float  # seconds or octets, when it was raised
    threshold: float


class MailboxAlarmCleared(Event, frozen=True, kw_only=True):
    mailbox_id: str
    alarm: str


class CheckpointSigned(Event, frozen=True, kw_only=True):
    """The journal signed a checkpoint of a log's Merkle tree (SPEC.md 8.1): the control
    log's, or with ``mailbox_id`` that mailbox log's; its first ``size`` records, whose head
    is ``root``. ``note`` is the signed note itself, so whoever follows the audit feed (a
    witness) gets every checkpoint."""

    origin: str
    size: int
    root: bytes
    note: str
    mailbox_id: str = ""


class StoreSpaceLow(Event, frozen=True, kw_only=True):
    """The data folder's file system went below ``[store] min_free_bytes``: intake answers
    452 4.3.1 until ``StoreSpaceRestored`` (SPEC.md 13.8)."""

    free_bytes: int
    min_free_bytes: int


class StoreSpaceRestored(Event, frozen=True, kw_only=True):
    free_bytes: int


class CertificateIssued(Event, frozen=True, kw_only=True):
    """An ACME CA issued the listeners' certificate (SPEC.md 12.4): written to the data
    folder, in service in the journal, and announced to every worker."""

    names: tuple[str, ...]
    directory: str  # the CA's directory URL
    issuer: str  # the issuing certificate's subject (RFC 4514)
    serial: str  # hex
    sha256: str  # fingerprint, colon hex
    not_before: datetime
    not_after: datetime
    renewal: bool = False  # it replaced an earlier certificate from the CA
    seconds: float = 0.0  # how long the CA took, from the first request to the certificate


class CertificateRenewalFailed(Event, frozen=True, kw_only=True):
    """Obtaining or renewing the ACME certificate failed (the CA down, a challenge failed,
    an error of the CA's): the certificate in service stays (SPEC.md 12.4)."""

    names: tuple[str, ...]
    directory: str
    stage: str  # "directory", "account", "order", "challenge", "finalize", "install"
    reason: str
    failures: int  # in a row, this one included
    retry_in: float  # seconds until the next attempt
    serving: str  # what stays in service: "acme" (an earlier certificate) or "self-signed"
    serving_sha256: str = ""
    serving_not_after: datetime | None = None


ControlEvent = (
    MailboxCreated
    | MailboxUpdated
    | MailboxKeyRewrapped
    | MailboxKeyReset
    | MailboxDeleted
    | MessagesExpunged
    | LogCompacted
    | LogTailTruncated
    | MessagesCommitted
    | MessageLogAnchored
    | LogDamaged
    | GatewayStarted
    | GatewayStopped
    | SmtpSessionEnded
    | MessageAccepted
    | DeliveryRefused
    | Pop3Login
    | Pop3SessionEnded
    | Pop3SessionProgress
    | Pop3ProxySessionEnded
    | SmtpLogin
    | SmtpProxySessionEnded
    | AdminAccountCreated
    | AdminLogin
    | AdminPasswordChanged
    | ApiTokenCreated
    | ApiTokenRevoked
    | AdminRequestFailed
    | ConnectionsSummarized
    | AdminCredentialsMigrated
    | AdminSessionStarted
    | AdminSessionEnded
    | MailboxAlarmRaised
    | MailboxAlarmCleared
    | StoreSpaceLow
    | StoreSpaceRestored
    | CertificateIssued
    | CertificateRenewalFailed
    | CheckpointSigned
)


# -- mailbox message logs ------------------------------------------------------------------


class MessageStored(Event, frozen=True, kw_only=True):
    """The commit record of one message: it exists once this record is durable. Its sealed
    chunks are the CHUNK records ``chunk_seqs`` earlier in the same log. In the clear: id,
    time, sizes and key id; everything else is inside ``envelope``, sealed."""

    message_id: str
    size: int  # plaintext octets, the POP3 size
    sealed_size: int
    key_id: str
    wrapped_key: bytes  # HPKE-sealed data key
    envelope: bytes  # sealed Envelope, see gateway.crypto
    chunk_seqs: tuple[int, ...]
    # A copy the POP3 proxy made: hex HMAC-SHA256 under the gateway's source-key secret of
    # (mailbox id, target, remote user, upstream UIDL), so the same upstream message is stored
    # once (services.source_keys; copies from before the secret: the unkeyed SHA-256 of
    # target NUL remote user NUL UIDL). Empty for everything else.
    source_key: str = ""


class MessageAbandoned(Event, frozen=True, kw_only=True):
    """A message given up before its commit record (its client went away, its worker
    ended): the CHUNK records ``chunk_seqs`` earlier in the same log are its, and no commit
    will name them. Written on a shared store only, where compaction cannot tell them from
    another node's message in flight (SPEC.md 17.5)."""

    message_id: str
    chunk_seqs: tuple[int, ...]


MessageEvent = MessageStored | MessageAbandoned


class Envelope(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the gateway knows about a message besides its bytes. Sealed with the message."""

    received_at: datetime
    origin: str  # "journal", "smtp-proxy" or "pop3-proxy"
    mail_from: str = ""
    rcpt_to: tuple[str, ...] = ()
    client_address: str = ""
    helo: str = ""
    tls: str = ""  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; empty when plain
    target: str = ""  # proxy: the upstream server
    remote_user: str = ""  # proxy: the upstream login name
    upstream_uidl: str = ""  # POP3 proxy: the upstream UIDL
    upstream_reply: str = ""  # SMTP proxy: the upstream's 250 after the content (queue id)


# -- codecs --------------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_control_decoder = msgspec.msgpack.Decoder(ControlEvent)
_message_decoder = msgspec.msgpack.Decoder(MessageEvent)
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_json_encoder = msgspec.json.Encoder()
_tags = msgspec.msgpack.Decoder(dict[str, Any])


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def _decode(decoder: msgspec.msgpack.Decoder[Any], data: bytes) -> Any:
    try:
        return decoder.decode(data)
    except msgspec.ValidationError:
        # An unknown tag comes from a newer gateway: skip it. Anything else is a real error.
        tag = _tags.decode(data).get("type")
        if isinstance(tag, str) and tag not in _KNOWN_TAGS:
            return None
        raise


_KNOWN_TAGS = frozenset(
    cls.__name__
    for cls in (
        MailboxCreated,
        MailboxUpdated,
        MailboxKeyRewrapped,
        MailboxKeyReset,
        MailboxDeleted,
        MessagesExpunged,
        LogCompacted,
        LogTailTruncated,
        MessagesCommitted,
        MessageLogAnchored,
        LogDamaged,
        GatewayStarted,
        GatewayStopped,
        SmtpSessionEnded,
        MessageAccepted,
        DeliveryRefused,
        Pop3Login,
        Pop3SessionEnded,
        Pop3SessionProgress,
        Pop3ProxySessionEnded,
        SmtpLogin,
        SmtpProxySessionEnded,
        AdminAccountCreated,
        AdminLogin,
        AdminPasswordChanged,
        ApiTokenCreated,
        ApiTokenRevoked,
        AdminRequestFailed,
        ConnectionsSummarized,
        AdminCredentialsMigrated,
        AdminSessionStarted,
        AdminSessionEnded,
        MessageStored,
        MessageAbandoned,
    )
)


def decode_control_event(data: bytes) -> ControlEvent | None:
    """Decode a control-log event; None for an event type this version does not know.
    Raises msgspec.DecodeError on bytes that are not an event at all."""
    result: ControlEvent | None = _decode(_control_decoder, data)
    return result


def decode_message_event(data: bytes) -> MessageEvent | None:
    result: MessageEvent | None = _decode(_message_decoder, data)
    return result


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    return _envelope_decoder.decode(data)


def event_to_json(event: Event) -> bytes:
    return _json_encoder.encode(event)
