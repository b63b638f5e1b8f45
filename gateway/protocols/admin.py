"""The admin API's messages: typed requests and replies, JSON over a websocket. Pure; no I/O.

Every message is one websocket text frame holding one JSON object. A request names its
operation in ``op`` and carries a client-chosen ``id``; every reply carries the same ``id`` and
names its kind in ``type``. Errors are replies too (``type: "error"``, a stable ``code`` and a
message for people), so a client never has to guess from a dropped connection. Audit records
pushed by a subscription carry the subscription's id instead of a request id.

The server decodes with :func:`decode_request` (which tells a malformed frame, an unknown
operation and a bad field apart) and encodes with :func:`encode_reply`; clients use
:func:`encode_request` and :func:`decode_reply`. SPEC.md section 13 is the reference.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "REQUESTS",
    "AdminPasswd",
    "ApiError",
    "Audit",
    "AuditCaughtUp",
    "AuditSubscribe",
    "AuditUnsubscribe",
    "CertificateView",
    "CheckpointLatest",
    "CheckpointReply",
    "CheckpointSign",
    "ConsistencyProofReply",
    "Done",
    "ErrorCode",
    "ErrorReply",
    "InclusionProofReply",
    "ListenerView",
    "Login",
    "Logout",
    "Mailbox",
    "MailboxActivate",
    "MailboxCreate",
    "MailboxCreated",
    "MailboxDelete",
    "MailboxDeleted",
    "MailboxGet",
    "MailboxList",
    "MailboxPasswd",
    "MailboxPasswordChanged",
    "MailboxPasswordReset",
    "MailboxPurgeUnreadable",
    "MailboxReset",
    "MailboxSuspend",
    "MailboxUnreadablePurged",
    "MailboxUpdate",
    "MailboxView",
    "Mailboxes",
    "MinuteView",
    "ProofConsistency",
    "ProofInclusion",
    "Reply",
    "Request",
    "Session",
    "Status",
    "StatusReply",
    "Subscribed",
    "TokenCreate",
    "TokenCreated",
    "TokenList",
    "TokenRevoke",
    "TokenView",
    "Tokens",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
]


class ErrorCode:
    """The ``code`` of an error reply: stable strings scripts can match on."""

    MALFORMED = "malformed"  # not a JSON object
    UNKNOWN_OP = "unknown-op"
    BAD_REQUEST = "bad-request"  # a field missing, of the wrong type or out of range
    UNAUTHENTICATED = "unauthenticated"  # log in first, or the session/token expired
    BAD_CREDENTIALS = "bad-credentials"
    THROTTLED = "throttled"  # too many failed logins: wait retry_after seconds
    NO_SUCH_MAILBOX = "no-such-mailbox"
    NO_SUCH_TOKEN = "no-such-token"  # noqa: S105 - an error code, not a secret
    CONFLICT = "conflict"  # not in the state the operation needs (e.g. delete while active)
    INVALID = "invalid"  # a value the operation refuses (name too long, control characters)
    WRONG_PASSWORD = "wrong-password"  # noqa: S105 - the mailbox's old password did not open its key
    UNAVAILABLE = "unavailable"  # the mailbox is damaged, the disk is full, ...
    INTERNAL = "internal"


# -- requests ------------------------------------------------------------------------------


class _Request(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="op", forbid_unknown_fields=True
):
    id: int | str | None = None


class Login(_Request, frozen=True, kw_only=True, tag="login"):
    """Exactly one of ``password`` (the admin's) and ``token`` (an API token)."""

    password: str | None = None
    token: str | None = None


class Logout(_Request, frozen=True, kw_only=True, tag="logout"):
    pass


class MailboxList(_Request, frozen=True, kw_only=True, tag="mailbox.list"):
    pass


class MailboxGet(_Request, frozen=True, kw_only=True, tag="mailbox.get"):
    mailbox: str  # the 32-hex id or the address mbx-<id>@<domain>


class MailboxCreate(_Request, frozen=True, kw_only=True, tag="mailbox.create"):
    name: str
    description: str = ""
    password: str | None = None  # None: the gateway generates one (shown once)


class MailboxUpdate(_Request, frozen=True, kw_only=True, tag="mailbox.update"):
    mailbox: str
    name: str | None = None
    description: str | None = None
    # Its own backlog alarm thresholds (SPEC.md 13.8): absent keeps, 0 turns the alarm off,
    # a negative value goes back to the configuration's.
    max_waiting_age: float | None = None
    max_waiting_bytes: int | None = None
    expect_mail_every: float | None = None


class MailboxSuspend(_Request, frozen=True, kw_only=True, tag="mailbox.suspend"):
    mailbox: str


class MailboxActivate(_Request, frozen=True, kw_only=True, tag="mailbox.activate"):
    mailbox: str


class MailboxPasswd(_Request, frozen=True, kw_only=True, tag="mailbox.passwd"):
    mailbox: str
    old_password: str
    new_password: str | None = None


class MailboxReset(_Request, frozen=True, kw_only=True, tag="mailbox.reset"):
    """Needs ``confirm: true``: every message stored so far becomes unreadable."""

    mailbox: str
    confirm: bool = False
    new_password: str | None = None


class MailboxDelete(_Request, frozen=True, kw_only=True, tag="mailbox.delete"):
    mailbox: str
    purge: bool = False


class MailboxPurgeUnreadable(_Request, frozen=True, kw_only=True, tag="mailbox.purge-unreadable"):
    """Expunge every message sealed to a key a reset retired (nobody can ever read them)."""

    mailbox: str


class Status(_Request, frozen=True, kw_only=True, tag="status"):
    pass


class AdminPasswd(_Request, frozen=True, kw_only=True, tag="admin.passwd"):
    old_password: str
    new_password: str


class TokenCreate(_Request, frozen=True, kw_only=True, tag="token.create"):
    name: str
    expires_in_days: int | None = None  # None: never expires


class TokenList(_Request, frozen=True, kw_only=True, tag="token.list"):
    pass


class TokenRevoke(_Request, frozen=True, kw_only=True, tag="token.revoke"):
    token_id: str


class AuditSubscribe(_Request, frozen=True, kw_only=True, tag="audit.subscribe"):
    """Replay the control log from ``since`` (a sequence number; None: from now on), then
    stream live. ``mailbox`` and ``types`` filter; the sequence numbers keep counting across
    filtered-out records, and every record carries its chain value."""

    since: int | None = None
    mailbox: str | None = None
    types: tuple[str, ...] = ()
    follow: bool = True  # False: stop after the history (AuditCaughtUp, then nothing)


class AuditUnsubscribe(_Request, frozen=True, kw_only=True, tag="audit.unsubscribe"):
    subscription: int


class CheckpointLatest(_Request, frozen=True, kw_only=True, tag="checkpoint.latest"):
    """The latest signed checkpoint of the control log's tree (SPEC.md 8.1)."""


class CheckpointSign(_Request, frozen=True, kw_only=True, tag="checkpoint.sign"):
    """Sign a checkpoint now (if the tree moved since the last); replies ``checkpoint``."""


class ProofInclusion(_Request, frozen=True, kw_only=True, tag="proof.inclusion"):
    """The inclusion proof of a message's commit record against its mailbox log's latest
    checkpoint (SPEC.md 8.1); ``mailbox_id`` picks the copy (default: the first)."""

    message_id: str
    mailbox_id: str = ""


class ProofConsistency(_Request, frozen=True, kw_only=True, tag="proof.consistency"):
    """A consistency proof between a log's tree at two sizes (SPEC.md 8.1): the control
    log's, or with ``mailbox_id`` that mailbox log's; ``new_size`` at most its latest signed
    checkpoint's."""

    mailbox_id: str = ""
    old_size: int
    new_size: int


Request = (
    Login
    | Logout
    | MailboxList
    | MailboxGet
    | MailboxCreate
    | MailboxUpdate
    | MailboxSuspend
    | MailboxActivate
    | MailboxPasswd
    | MailboxReset
    | MailboxDelete
    | MailboxPurgeUnreadable
    | Status
    | AdminPasswd
    | TokenCreate
    | TokenList
    | TokenRevoke
    | AuditSubscribe
    | AuditUnsubscribe
    | CheckpointLatest
    | CheckpointSign
    | ProofInclusion
    | ProofConsistency
)

REQUESTS: dict[str, type[_Request]] = {cls.__struct_config__.tag: cls for cls in Request.__args__}


# -- replies -------------------------------------------------------------------------------


class _Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    id: int | str | None = None


class MailboxView(msgspec.Struct, frozen=True, kw_only=True):
    mailbox_id: str
    address: str
    name: str
    description: str
    status: str  # "active" or "suspended"
    # Readable: sealed to the mailbox's current key, what POP3 serves.
    messages: int
    bytes: int  # plaintext octets, as POP3 counts them
    created_at: datetime
    updated_at: datetime
    last_delivery: datetime | None = None
    last_retrieval: datetime | None = None
    # Why the mailbox is flagged: it cannot be served, or damage at its log's end lost
    # acknowledged messages (LogDamaged, on record for good; SPEC.md 6.3).
    damaged: str | None = None
    # Sealed to a key a reset retired: unreadable by anyone, kept until purged.
    unreadable_messages: int = 0
    unreadable_bytes: int = 0
    # Its backlog alarms up ("age", "size", "quiet") and its own thresholds (None: the
    # configuration's; SPEC.md 13.8).
    alarms: tuple[str, ...] = ()
    max_waiting_age: float | None = None
    max_waiting_bytes: int | None = None
    expect_mail_every: float | None = None
    # When its oldest waiting message was committed (the age alarm's measure); None: none
    # waits, or not known (SPEC.md 13.3).
    oldest_waiting_at: datetime | None = None


class ListenerView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    protocol: str
    address: str
    port: int
    tls: str


class CertificateView(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    sha256: str
    expires_at: datetime


class MinuteView(msgspec.Struct, frozen=True, kw_only=True):
    """One minute of traffic: messages in (accepted) and out (retrieved), SPEC.md 13.3."""

    minute: datetime  # its start, UTC
    accepted: int
    retrieved: int


class TokenView(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    name: str
    created_at: datetime
    expires_at: datetime | None = None


class Session(_Reply, frozen=True, kw_only=True, tag="session"):
    """Login succeeded. ``token`` can log in again (another connection) until it expires."""

    actor: str  # "admin" or "token:<name>"
    token: str | None = None
    expires_at: datetime | None = None


class Done(_Reply, frozen=True, kw_only=True, tag="done"):
    pass


class Mailboxes(_Reply, frozen=True, kw_only=True, tag="mailboxes"):
    mailboxes: tuple[MailboxView, ...]


class Mailbox(_Reply, frozen=True, kw_only=True, tag="mailbox"):
    mailbox: MailboxView
    # mailbox.suspend / mailbox.activate: it already was so; nothing done, nothing recorded.
    unchanged: bool = False


class MailboxCreated(_Reply, frozen=True, kw_only=True, tag="mailbox.created"):
    """The password is in this reply and nowhere else, ever."""

    mailbox: MailboxView
    password: str


class MailboxPasswordChanged(_Reply, frozen=True, kw_only=True, tag="mailbox.password-changed"):
    mailbox: MailboxView
    password: str


class MailboxPasswordReset(_Reply, frozen=True, kw_only=True, tag="mailbox.password-reset"):
    mailbox: MailboxView
    password: str
    unreadable_messages: int
    unreadable_bytes: int
    warning: str


class MailboxDeleted(_Reply, frozen=True, kw_only=True, tag="mailbox.deleted"):
    mailbox_id: str
    purged_messages: int


class MailboxUnreadablePurged(_Reply, frozen=True, kw_only=True, tag="mailbox.unreadable-purged"):
    mailbox: MailboxView
    purged_messages: int
    purged_bytes: int


class StatusReply(_Reply, frozen=True, kw_only=True, tag="status"):
    version: str
    hostname: str
    mail_domain: str
    started_at: datetime
    uptime_seconds: float
    listeners: tuple[ListenerView, ...]
    certificate: CertificateView | None
    sessions: int  # protocol sessions open now (SMTP, POP3), every worker's
    admin_connections: int
    storage_bytes: int  # everything under the data folder
    disk_free_bytes: int
    control_seq: int  # sequence number the next control-log record will get
    mailboxes: tuple[MailboxView, ...]
    # Under a supervisor: each protocol worker's sessions now (null: not running), by worker.
    workers: tuple[int | None, ...] = ()
    # The last 1,440 minutes (the current one included) that had mail in or out, oldest
    # first; the others had none. Empty from a gateway that does not count them.
    messages_per_minute: tuple[MinuteView, ...] = ()
    # The verifier key of the journal's signed checkpoints (SPEC.md 8.1): what an auditor
    # checks them with. Empty from a gateway that does not sign them.
    checkpoint_vkey: str = ""


class TokenCreated(_Reply, frozen=True, kw_only=True, tag="token.created"):
    """The token is in this reply and nowhere else, ever (the gateway keeps a hash)."""

    token: str
    info: TokenView


class Tokens(_Reply, frozen=True, kw_only=True, tag="tokens"):
    tokens: tuple[TokenView, ...]


class Subscribed(_Reply, frozen=True, kw_only=True, tag="subscribed"):
    subscription: int
    next_seq: int  # the live part starts here


class Audit(_Reply, frozen=True, kw_only=True, tag="audit"):
    """One control-log record. ``record`` is its body exactly as stored (MessagePack), so an
    auditor recomputes ``chain = SHA-256(previous chain || header || record)`` (SPEC.md 3.3)
    and compares; ``event`` is the same record decoded, for people and filters (None for an
    event type this version does not know)."""

    subscription: int
    seq: int
    chain: str  # hex of the 32-byte chain value after this record
    record: bytes  # JSON: base64
    event: dict[str, Any] | None


class AuditCaughtUp(_Reply, frozen=True, kw_only=True, tag="audit.caught-up"):
    """History replayed up to ``next_seq``; live records follow (if ``follow``)."""

    subscription: int
    next_seq: int


class ErrorReply(_Reply, frozen=True, kw_only=True, tag="error"):
    code: str
    message: str
    retry_after: float | None = None


class CheckpointReply(_Reply, frozen=True, kw_only=True, tag="checkpoint"):
    note: str  # the signed note; empty while none was signed


class InclusionProofReply(_Reply, frozen=True, kw_only=True, tag="proof.inclusion"):
    index: int  # the commit record's seq in its mailbox log
    leaf: str  # base64 of the leaf: seq || kind || body (SPEC.md 8.1)
    hashes: tuple[str, ...]  # base64, RFC 9162 2.1.3.1
    mailbox_id: str
    size: int
    checkpoint: str  # the signed note the proof is against


class ConsistencyProofReply(_Reply, frozen=True, kw_only=True, tag="proof.consistency"):
    old_size: int
    new_size: int
    hashes: tuple[str, ...]  # base64, RFC 9162 2.1.4.1


Reply = (
    Session
    | Done
    | Mailboxes
    | Mailbox
    | MailboxCreated
    | MailboxPasswordChanged
    | MailboxPasswordReset
    | MailboxDeleted
    | MailboxUnreadablePurged
    | StatusReply
    | TokenCreated
    | Tokens
    | Subscribed
    | Audit
    | AuditCaughtUp
    | ErrorReply
    | CheckpointReply
    | InclusionProofReply
    | ConsistencyProofReply
)


class ApiError(Exception):
    """An error to answer with: raised anywhere while serving a request."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        request_id: int | str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id  # set when the request could be read this far

    def reply(self, request_id: int | str | None) -> ErrorReply:
        return ErrorReply(
            id=request_id, code=self.code, message=self.message, retry_after=self.retry_after
        )


# -- codecs --------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)
_reply_decoder = msgspec.json.Decoder(Reply)
_object_decoder = msgspec.json.Decoder(dict[str, Any])


def decode_request(data: str | bytes) -> Request:
    """Decode one frame. Raises ApiError (with the request id when it could be read)."""
    try:
        raw = _object_decoder.decode(data)
    except msgspec.DecodeError:
        raise ApiError(ErrorCode.MALFORMED, "a request must be one JSON object") from None
    request_id = raw.get("id")
    if not isinstance(request_id, int | str) or isinstance(request_id, bool):
        request_id = None
    op = raw.get("op")
    if not isinstance(op, str):
        raise ApiError(ErrorCode.BAD_REQUEST, 'a request needs "op"', request_id=request_id)
    if op not in REQUESTS:
        raise ApiError(ErrorCode.UNKNOWN_OP, f"unknown operation {op!r}", request_id=request_id)
    try:
        request: Request = msgspec.convert(raw, Request)
    except msgspec.ValidationError as exc:
        raise ApiError(ErrorCode.BAD_REQUEST, f"{op}: {exc}", request_id=request_id) from None
    return request


def encode_reply(reply: Reply) -> str:
    return _encoder.encode(reply).decode()


def encode_request(request: Request) -> str:
    return _encoder.encode(request).decode()


def decode_reply(data: str | bytes) -> Reply:
    reply: Reply = _reply_decoder.decode(data)
    return reply
