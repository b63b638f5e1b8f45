"""The journal protocol: what protocol workers and the journal say to each other (SPEC.md 16.2).

Frames are a u32 little-endian length and a MessagePack body, at most ``MAX_FRAME`` octets:
one msgspec tagged union each way. Every request carries an ``id`` the reply repeats; the
journal also pushes mailbox changes (``id`` 0) so a worker's view of the mailboxes is a
projection of the control log like the journal's own. Nothing in it assumes a shared process
or machine: sealed bytes, sizes, ids and record locations only, never a password or a
private key. Pure: bytes in, values out.
"""

from __future__ import annotations

import struct
from datetime import datetime
from typing import Any

import msgspec

from ..services.writer import SealedCopy

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "Abort",
    "Append",
    "Audit",
    "CertificateChanged",
    "Commit",
    "Done",
    "Expunge",
    "Failed",
    "FrameError",
    "GetKeyFile",
    "GetMessage",
    "HasSource",
    "Hello",
    "JournalFrames",
    "KeyFileBytes",
    "ListMaildrop",
    "Lock",
    "MailboxChanged",
    "MailboxGone",
    "MailboxView",
    "MaildropPage",
    "MessageEntry",
    "MessageList",
    "RecordAt",
    "ToJournal",
    "ToWorker",
    "Unlock",
    "Welcome",
    "WorkerFrames",
    "encode_frame",
]

PROTOCOL_VERSION = 2  # 2: listmaildrop and getmessage in place of listmessages
# A frame holds at most a few sealed chunks (256 KiB of plaintext each, compressed) or one
# message listing; anything larger is refused before it is read.
MAX_FRAME = 4 * 1024 * 1024
_LENGTH = struct.Struct("<I")


class FrameError(Exception):
    """Bytes that are not a frame of this protocol: the connection is closed."""


class _Frame(msgspec.Struct, frozen=True, kw_only=True, tag_field="op", tag=str.lower):
    id: int = 0


# -- values ----------------------------------------------------------------------------------


class MailboxView(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker knows of a mailbox: enough to take mail for it and to log in to it."""

    mailbox_id: str
    name: str
    status: str
    key_id: str
    wrap_id: str
    created_at: datetime
    updated_at: datetime
    public_key: bytes  # the mailbox's public key: all that sealing needs
    damaged: str | None = None  # it cannot take mail nor be retrieved


class RecordAt(msgspec.Struct, frozen=True, array_like=True):
    """Where a record is: the segment file's name in the mailbox's log folder, its offset
    and framed size, and its seq."""

    file: str
    offset: int
    size: int
    seq: int


class MessageEntry(msgspec.Struct, frozen=True, array_like=True):
    message_id: str
    seq: int
    size: int
    key_id: str
    commit: RecordAt
    chunks: list[RecordAt]


# -- worker to journal -------------------------------------------------------------------------


class Hello(_Frame, frozen=True, kw_only=True):
    version: int
    worker: str  # a name for logs: "worker-2", pid


class GetKeyFile(_Frame, frozen=True, kw_only=True):
    mailbox_id: str


class ListMaildrop(_Frame, frozen=True, kw_only=True):
    """A POP3 maildrop at login, brief: each message's id and size only (its records are
    asked for with ``getmessage`` when it is read), those sealed to ``key_id`` only, oldest
    first, as of the first page (messages committed since are left out, expunged since too)."""

    mailbox_id: str
    key_id: str
    listing: int = 0  # 0: a new listing; else the one a `maildrop` said goes on


class GetMessage(_Frame, frozen=True, kw_only=True):
    mailbox_id: str
    message_id: str


class HasSource(_Frame, frozen=True, kw_only=True):
    mailbox_id: str
    source_keys: list[str]


class Append(_Frame, frozen=True, kw_only=True):
    """Sealed chunks of a message for one mailbox. The first frame of a message (``token``
    new on this connection) begins it: ``mailbox_ids`` and ``message_ids`` pair up."""

    token: int
    mailbox_ids: list[str]
    message_ids: list[str]
    source_key: str = ""
    mailbox_id: str
    chunks: list[bytes]


class Commit(_Frame, frozen=True, kw_only=True):
    token: int
    mailbox_ids: list[str]
    message_ids: list[str]
    source_key: str = ""
    copies: list[SealedCopy]
    accepted: bytes = b""  # a MessageAccepted naming this message, written with its witness


class Abort(_Frame, frozen=True, kw_only=True):
    token: int


class Expunge(_Frame, frozen=True, kw_only=True):
    mailbox_id: str
    message_ids: list[str]
    actor: bytes  # a MessagePack Actor


class Lock(_Frame, frozen=True, kw_only=True):
    """Take the maildrop lock of a mailbox (one POP3 session per mailbox across every
    worker); it dies with the connection."""

    mailbox_id: str


class Unlock(_Frame, frozen=True, kw_only=True):
    mailbox_id: str


class Audit(_Frame, frozen=True, kw_only=True):
    """An audit event (MessagePack of a control event of an audit type only)."""

    event: bytes


ToJournal = (
    Hello
    | GetKeyFile
    | ListMaildrop
    | GetMessage
    | HasSource
    | Append
    | Commit
    | Abort
    | Expunge
    | Lock
    | Unlock
    | Audit
)

# -- journal to worker -------------------------------------------------------------------------


class Welcome(_Frame, frozen=True, kw_only=True):
    version: int
    mailboxes: list[MailboxView]
    max_message_bytes: int
    more: bool = False  # more mailboxes follow in another welcome


class KeyFileBytes(_Frame, frozen=True, kw_only=True):
    data: bytes


class MessageList(_Frame, frozen=True, kw_only=True):
    messages: list[MessageEntry]
    listing: int = 0  # not 0: more of this listing follows; ask for it with this number


class MaildropPage(_Frame, frozen=True, kw_only=True):
    ids: bytes  # the message ids' 16 bytes, one after another, oldest first
    sizes: list[int]
    listing: int = 0  # not 0: more of this listing follows; ask for it with this number


class Done(_Frame, frozen=True, kw_only=True):
    """Success; ``value`` is the answer of a yes/no or counting request."""

    value: int = 0


class Failed(_Frame, frozen=True, kw_only=True):
    """A refusal; ``code`` names the exception class the worker raises (SPEC.md 16.2)."""

    code: str
    message: str


class MailboxChanged(_Frame, frozen=True, kw_only=True):
    mailbox: MailboxView


class MailboxGone(_Frame, frozen=True, kw_only=True):
    mailbox_id: str


class CertificateChanged(_Frame, frozen=True, kw_only=True):
    """Pushed once the journal put a new certificate from the ACME CA in the data folder
    (SPEC.md 12.4): the worker loads it for new handshakes."""


ToWorker = (
    Welcome
    | KeyFileBytes
    | MessageList
    | MaildropPage
    | Done
    | Failed
    | MailboxChanged
    | MailboxGone
    | CertificateChanged
)

_encoder = msgspec.msgpack.Encoder()


def encode_frame(frame: _Frame) -> bytes:
    body = _encoder.encode(frame)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} octets exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


class _Frames:
    """Splits a byte stream into frames of one direction: ``feed`` bytes, get every whole
    frame back. A length over MAX_FRAME or a body that is not a frame of this direction
    raises FrameError (the caller closes the connection)."""

    def __init__(self, kind: Any) -> None:
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(kind)
        self._buffer = bytearray()

    def _feed(self, data: bytes | bytearray) -> list[Any]:
        self._buffer += data
        frames: list[Any] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} octets exceeds {MAX_FRAME}")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            body = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            try:
                frames.append(self._decoder.decode(body))
            except msgspec.DecodeError as exc:
                raise FrameError(f"not a frame: {exc}") from None
        return frames


class JournalFrames(_Frames):
    """Frames a worker sends, as the journal reads them."""

    def __init__(self) -> None:
        super().__init__(ToJournal)

    def feed(self, data: bytes | bytearray) -> list[ToJournal]:
        return self._feed(data)


class WorkerFrames(_Frames):
    """Frames the journal sends, as a worker reads them."""

    def __init__(self) -> None:
        super().__init__(ToWorker)

    def feed(self, data: bytes | bytearray) -> list[ToWorker]:
        return self._feed(data)
