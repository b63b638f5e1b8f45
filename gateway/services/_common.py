"""What the archive and message intake share: settings, errors, and a mailbox's live state."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from ..crypto import KdfParams, MailboxPublicKey
from ..ids import parse_mailbox_id
from ..log import CONTROL_LOG_ID, DEFAULT_SEGMENT_BYTES, Location, LogWriter, StoreLog
from .message_index import MessageIndex, StoredMessage
from .projection import MailboxInfo

__all__ = [
    "CONTROL_LOG_ID",
    "MAX_ENVELOPE_BYTES",
    "ArchiveError",
    "MailboxState",
    "MailboxUnavailable",
    "MessageTooLarge",
    "NoSuchMailbox",
    "StoreConfig",
    "WitnessedCopy",
    "find_mailbox",
    "wrap_id",
]

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 100 * 1024 * 1024
# The sealed envelope travels inside the commit record, whose body is at most 1 MiB
# (log MAX_BODY); half of that leaves room for the key and framing. Thousands of recipients
# fit easily.
MAX_ENVELOPE_BYTES = 512 * 1024


class ArchiveError(Exception):
    """A request the archive refuses; the message is safe to show to an administrator."""


class NoSuchMailbox(ArchiveError):
    pass


class MailboxUnavailable(ArchiveError):
    """Suspended, damaged, or otherwise not accepting mail right now (a temporary condition)."""


class InvalidValue(ArchiveError):
    """A name, description or password the archive refuses."""


class MailboxStateConflict(ArchiveError):
    """The mailbox is not in the state the operation needs (delete while active, ...)."""


class MessageTooLarge(ArchiveError):
    pass


class InsufficientStorage(ArchiveError):
    """The data folder's file system is under ``[store] min_free_bytes`` (SPEC.md 13.8):
    no message is taken in until there is room again (a temporary condition)."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    kdf: KdfParams = field(default_factory=KdfParams)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # How long a segment file superseded by compaction is kept. A copy of the data folder
    # (cp -a, rsync) that takes less than this is consistent whatever it caught (SPEC.md).
    compaction_grace: float = 12 * 3600.0
    # How often the server compacts and deletes expired segment files.
    maintenance_interval: float = 600.0
    control_history_bytes: int = 0  # 0: never archive control segments (SPEC.md 6.8)


def find_mailbox(boxes: Mapping[str, T], mailbox_id: str) -> T:
    """The entry of a mailbox, by its id in any accepted spelling (ids.parse_mailbox_id).
    Raises NoSuchMailbox, whose message is safe to show."""
    try:
        canonical = parse_mailbox_id(mailbox_id)
    except ValueError as exc:
        raise NoSuchMailbox(str(exc)) from None
    box = boxes.get(canonical)
    if box is None:
        raise NoSuchMailbox(f"no mailbox {canonical}")
    return box


def wrap_id(key_file: bytes) -> str:
    return hashlib.sha256(key_file).digest()[:16].hex()


@dataclass(slots=True)
class MailboxState:
    info: MailboxInfo
    index: MessageIndex
    writer: LogWriter[StoreLog] | None = None
    public_key: MailboxPublicKey | None = None
    damaged: str | None = None  # why the mailbox cannot take mail, if it cannot
    # Set once its log is open and checked (or it was found damaged): until then its index
    # and writer are not there, and the journal waits for it (SPEC.md 6.3).
    opened: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)  # key changes, deletion, compaction
    io_lock: trio.Lock = field(default_factory=trio.Lock)  # record reads vs segment replacement
    # Messages being written: writer id -> (the first seq it may use, its chunks so far).
    inflight: dict[int, tuple[int, list[Location]]] = field(default_factory=dict)
    # Its recovery point (SPEC.md 6.7): the seq it covers (-1: none), the log's bytes written
    # when it was made, its size; ``recovery_due``: the index changed without the log growing
    # (an expunge, a compaction), so the next checkpoint makes a new one.
    recovery_seq: int = -1
    recovery_written: int = 0
    recovery_size: int = 0
    recovery_due: bool = False
    unsettled: bool = False  # a failed commit could not be rolled back: see _archive_commits
    # A key reset in progress refuses new witnesses and waits for those in flight, so no
    # message sealed to the retired key is committed after the reset (SPEC.md 6.5).
    resetting: bool = False
    witnessing: int = 0
    witnesses_idle: trio.Event = field(default_factory=trio.Event)


@dataclass(frozen=True, slots=True)
class WitnessedCopy:
    """One mailbox's copy of a message whose commit record is durable: what its witness
    names and what is published once the witness is durable."""

    box: MailboxState
    stored: StoredMessage
    chain: bytes
    source_key: str = ""
