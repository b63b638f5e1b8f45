"""The archive: mailboxes, their keys and their message logs, behind one async API.

Theory of operation
-------------------
The control log is replayed into a :class:`ControlState` on open; each mailbox's message log
into a :class:`MessageIndex`. Every change goes through here and is an event appended (and
made durable) *before* the in-memory state changes, so the state is always a projection of
what is on disk. Blocking work (files, fsync, Argon2id, sealing of large pieces) runs in
worker threads; the trio loop only routes.

A message is written as it arrives: its sealed chunks go to the mailbox log as they fill (no
fsync of their own), and :meth:`MessageWriter.commit` appends the commit record and waits for
the fdatasync that makes the whole message durable and, in the same round, its witness in the
control log, which is what makes it exist (:meth:`Archive.commit`). A message whose commit
never became durable or witnessed is invisible: its chunks are orphans that compaction
reclaims.

The :class:`Archive` facade is all the rest of the gateway sees. The work is done by private
modules over one shared :class:`ArchiveCore` (``_archive_core``): recovery on open
(``_archive_recovery``), mailbox lifecycle (``_archive_mailboxes``), keys and their two-phase
changes (``_archive_keys``), the commit point (``_archive_commits``), reading messages back
(``_archive_reads``) and compaction (``_archive_compaction``).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from ..crypto import MailboxPrivateKey, MailboxPublicKey
from ..events import SYSTEM, Actor, ControlEvent, Envelope, MailboxStatus
from ..ids import new_message_id, parse_message_id
from ..log import CommitGroup, DataDir, Location, LogRecord, LogWriter, StoreLog
from . import (
    _archive_checkpoint,
    _archive_commits,
    _archive_compaction,
    _archive_keys,
    _archive_mailboxes,
    _archive_reads,
    _archive_shared,
)
from ._archive_commits import CopyCommit
from ._archive_core import ArchiveCore
from ._archive_reads import sealed_of
from ._archive_recovery import open_core, open_mailboxes
from ._common import (
    CONTROL_LOG_ID,
    ArchiveError,
    InsufficientStorage,
    InvalidValue,
    MailboxState,
    MailboxStateConflict,
    MailboxUnavailable,
    MessageTooLarge,
    NoSuchMailbox,
    StoreConfig,
    find_mailbox,
    wrap_id,
)
from .intake import PendingMessage
from .keyforge import KeyForge
from .message_index import StoredMessage
from .projection import ControlState, MailboxInfo
from .writer import MessageWriter, SealTarget

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "CONTROL_LOG_ID",
    "Archive",
    "ArchiveError",
    "Backlog",
    "InsufficientStorage",
    "InvalidValue",
    "MailboxStateConflict",
    "MailboxUnavailable",
    "MessageTooLarge",
    "MessageWriter",
    "NoSuchMailbox",
    "StorageUsage",
    "StoreConfig",
    "find_mailbox",
    "sealed_of",
    "store_config",
    "wrap_id",
]

# Told the records of every group-commit round of the control log, and whether the round
# made them durable (log.LogWriter.observer).
ControlObserver = Callable[[list[LogRecord], bool], None]


@dataclass(frozen=True, slots=True)
class Backlog:
    """A mailbox's messages waiting to be retrieved: how many, their octets, the oldest's id."""

    messages: int
    octets: int
    oldest: str | None


@dataclass(frozen=True, slots=True)
class StorageUsage:
    used_bytes: int  # every file under the data folder
    free_bytes: int  # left on its file system


def store_config(config: Config) -> StoreConfig:
    """The archive's settings from the gateway's configuration."""
    return StoreConfig(
        segment_bytes=config.store.segment_bytes,
        kdf=config.store.kdf.params(),
        max_message_bytes=config.smtp.max_message_size,
        compaction_grace=config.store.compaction_grace,
        maintenance_interval=config.store.maintenance_interval,
        control_history_bytes=config.store.control_history_bytes,
    )


class Archive:
    def __init__(self, core: ArchiveCore) -> None:
        self._core = core
        self.data: DataDir = core.data  # the data folder's paths and whole-file operations
        self.config: StoreConfig = core.config
        self.state: ControlState = core.state  # read only: change it through the archive
        self.control: LogWriter[StoreLog] = core.control
        # One group commit for every log of this archive (SPEC.md 6.1).
        self.commit_group: CommitGroup = core.commit_group
        # Told the id of every mailbox whose state changed (created, updated, new key,
        # damaged, deleted): the journal pushes it to the protocol workers. Must not block.
        self.mailbox_listeners: list[Callable[[str], None]] = core.mailbox_listeners
        # Set by whoever runs a KeyForge next to the archive (the server, the benchmark).
        self.key_forge: KeyForge | None = None
        # Per mailbox: its oldest waiting message and when it was committed.
        self._oldest: dict[str, tuple[str, datetime]] = {}

    # -- open and close ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        root: Path | DataDir,
        config: StoreConfig | None = None,
        *,
        mailboxes_later: bool = False,
    ) -> Archive:
        """Open (or create) the data folder at ``root`` (or the store a ``DataDir`` answers
        for: a fleet store's, SPEC.md 17.6) and hold its lock until :meth:`aclose`; recovery
        on open as SPEC.md 6.3 describes. Raises DataDirLocked, or LogCorrupt for a control
        log that does not check out. With ``mailboxes_later`` the mailbox logs are not
        opened yet: the caller runs :meth:`open_mailboxes` beside its work, and waits on
        :meth:`opened` before it uses a mailbox's messages."""
        data = root if isinstance(root, DataDir) else DataDir(root)
        archive = cls(await open_core(data, config or StoreConfig()))
        if not mailboxes_later:
            await archive.open_mailboxes()
        return archive

    async def open_mailboxes(self) -> None:
        """Open every mailbox log not open yet (those asked for first); returns once all are."""
        await open_mailboxes(self._core)

    async def opened(self, mailbox_id: str) -> None:
        """Wait until the mailbox's log is open (or it was found damaged); one not opened yet
        is opened next. Raises NoSuchMailbox."""
        await self._core.opened(mailbox_id)

    async def all_opened(self) -> None:
        """Wait until every mailbox log is open (or found damaged)."""
        for box in list(self._core.boxes.values()):
            await box.opened.wait()

    async def aclose(self, *, checkpoint: bool = True) -> None:
        """Close, leaving a recovery point for every log that moved (SPEC.md 6.7);
        ``checkpoint=False`` leaves the folder as a process that died would."""
        with trio.CancelScope(shield=True):
            try:
                if checkpoint:
                    await _archive_checkpoint.checkpoint(self._core, everything=True)
            finally:
                self._core.close()

    async def checkpoint(self, *, everything: bool = False) -> int:
        """Recovery points for the logs that are due (SPEC.md 6.7), or with ``everything``
        for every log that moved at all; how many were made."""
        return await _archive_checkpoint.checkpoint(self._core, everything=everything)

    # -- other nodes of a fleet store (SPEC.md 17.5) -----------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether other nodes append to the same store (fleet mode)."""
        return self._core.data.shared

    async def follow_others(self) -> None:
        """Fold what other nodes commit as they commit it; runs until cancelled."""
        await _archive_shared.follow(self._core)

    async def catch_up(self) -> None:
        """Fold everything other nodes committed to the control log so far, and settle
        what it changes. Raises LogWriteError."""
        await _archive_shared.catch_up(self._core)

    async def lock_maildrop(self, mailbox_id: str) -> bool:
        """Lock a POP3 maildrop against other nodes, its mailbox caught up with what they
        committed; False when one holds it. Raises LogWriteError."""
        return await _archive_shared.lock_maildrop(self._core, mailbox_id)

    async def unlock_maildrop(self, mailbox_id: str) -> None:
        await _archive_shared.unlock_maildrop(self._core, mailbox_id)

    async def housekeeping(self) -> bool:
        """Whether this node runs the store's periodic passes (compaction, backlog alarms,
        signed checkpoints) now: one node of a fleet does. Raises LogWriteError."""
        return await _archive_shared.housekeeping(self._core)

    async def holds_maildrop(self, mailbox_id: str) -> bool:
        """Whether this node still holds a maildrop it locked (another node may have taken
        it while the store's connection holding it was lost). Raises LogWriteError."""
        return await _archive_shared.holds_maildrop(self._core, mailbox_id)

    # -- the data folder ---------------------------------------------------------------------------

    async def storage_usage(self) -> StorageUsage:
        """The bytes the store takes (under the data folder, or the fleet store's database)
        and the bytes free beside the data folder (admin ``status``)."""
        data = self._core.data
        used = await trio.to_thread.run_sync(data.size)
        free = (await trio.to_thread.run_sync(shutil.disk_usage, data.root)).free
        return StorageUsage(used, free)

    # -- the control log ---------------------------------------------------------------------------

    async def append_control(
        self, event: ControlEvent | Sequence[ControlEvent], *, durable: bool = True
    ) -> None:
        """Append an event (or several, in one batch) to the control log and fold it into
        the state. ``durable=False`` (audit records that acknowledge nothing) returns once
        written; the next durable round of the group commit makes it durable with
        everything else."""
        await self._core.append_control(event, durable=durable)

    @property
    def next_control_seq(self) -> int:
        """The sequence number the control log's next record will have."""
        return self._core.control.log.next_seq

    def observe_control(self, observer: ControlObserver) -> None:
        """Hand every round of control-log records to ``observer`` (in the trio thread, in
        order, after the round: the audit feed, the metrics), after those observing already."""
        self._core.control_observers.append(observer)

    async def sync_control(self) -> None:
        """Make every control record written so far durable (a round of the group commit)."""
        await self._core.control.append([], durable=True)

    def read_control(self, from_seq: int = 0) -> Iterator[LogRecord]:
        """The control log's records from ``from_seq`` on, read from the files and checked
        as they come (blocking: iterate in a worker thread). Raises LogCorrupt."""
        return self._core.data.records(None, from_seq=from_seq)

    # -- mailboxes ---------------------------------------------------------------------------------

    def mailboxes(self) -> list[MailboxInfo]:
        return sorted(self._core.state.mailboxes.values(), key=lambda m: m.created_at)

    def mailbox(self, mailbox_id: str) -> MailboxInfo:
        return self._core.box(mailbox_id).info

    def damaged(self, mailbox_id: str) -> str | None:
        """Why the mailbox cannot take mail or be served, if it cannot (as far as known:
        a mailbox being opened may yet be found damaged)."""
        return self._core.box(mailbox_id).damaged

    def damage_report(self, mailbox_id: str) -> str | None:
        """Why the mailbox is flagged damaged: it cannot be served, or damage found at its
        log's end lost acknowledged messages (``LogDamaged``, kept on record for good)."""
        box = self._core.box(mailbox_id)
        if box.damaged is not None:
            return box.damaged
        found = self._core.state.damage.get(box.info.mailbox_id)
        if not found:
            return None
        lost = sum(len(d.lost_message_ids) for d in found)
        return (
            f"damage found at the end of its log {len(found)} time(s), {lost} acknowledged "
            f"message(s) lost; the bytes are kept in {found[-1].moved_to or '(nothing left)'}"
        )

    def public_key(self, mailbox_id: str) -> MailboxPublicKey | None:
        """The key new mail for the mailbox is sealed to (None while it is damaged)."""
        return self._core.box(mailbox_id).public_key

    def record_file(self, mailbox_id: str, location: Location) -> str:
        """The name of the segment file that holds a record, in the mailbox's log folder."""
        box = self._box(mailbox_id)
        if box.writer is None:
            raise self._core.unavailable(box)
        return box.writer.log.file_name(location.segment)

    def _box(self, mailbox_id: str) -> MailboxState:
        """An open mailbox: its messages are known. MailboxUnavailable while being opened."""
        return self._core.open_box(mailbox_id)

    def pending_chunks(self, mailbox_id: str) -> list[Location]:
        """Chunks in the mailbox's log that no commit names (yet, or ever: the orphans of
        messages never committed, until compaction), oldest first."""
        return sorted(self._box(mailbox_id).index.pending_chunks.values(), key=lambda at: at.seq)

    def log_statistics(self) -> dict[str, dict[str, int]]:
        """Each open mailbox log's group-commit counts (batches, records, queued, next seq)."""
        return {
            mailbox_id: box.writer.statistics()
            for mailbox_id, box in self._core.boxes.items()
            if box.writer is not None
        }

    async def create_mailbox(
        self,
        name: str,
        description: str = "",
        *,
        password: str | None = None,
        actor: Actor = SYSTEM,
    ) -> tuple[MailboxInfo, str]:
        """Create a mailbox with a fresh key pair. Returns it and its password (generated
        unless given): the only time the password exists outside the caller's hands."""
        return await _archive_mailboxes.create_mailbox(
            self._core, name, description, password=password, actor=actor
        )

    async def update_mailbox(
        self,
        mailbox_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        status: MailboxStatus | None = None,
        alarms: Mapping[str, float | None] | None = None,
        actor: Actor = SYSTEM,
    ) -> MailboxInfo:
        """Change what is given; ``alarms``: its own backlog thresholds by name
        (``max_waiting_age``, ``max_waiting_bytes``, ``expect_mail_every``; None follows the
        configuration, 0 is off), those not named kept."""
        return await _archive_mailboxes.update_mailbox(
            self._core,
            mailbox_id,
            name=name,
            description=description,
            status=status,
            alarms=alarms,
            actor=actor,
        )

    async def delete_mailbox(
        self, mailbox_id: str, *, purge: bool = False, actor: Actor = SYSTEM
    ) -> int:
        """Delete a suspended mailbox. Refuses while messages remain unless ``purge``."""
        return await _archive_mailboxes.delete_mailbox(
            self._core, mailbox_id, purge=purge, actor=actor
        )

    # -- keys (SPEC.md 5, 6.5) ---------------------------------------------------------------------

    async def key_file(self, mailbox_id: str) -> bytes:
        """The mailbox's key file, checked against the control log (for a login elsewhere:
        the password never comes here). Raises MailboxUnavailable when it is damaged."""
        return await _archive_keys.key_file(self._core, mailbox_id)

    async def unlock(
        self, mailbox_id: str, password: str, *, limiter: trio.CapacityLimiter | None = None
    ) -> MailboxPrivateKey:
        """Open the mailbox's private key (Argon2id in a worker thread, at most as many at
        once as ``limiter`` allows). Raises crypto.WrongPassword."""
        return await _archive_keys.unlock(self._core, mailbox_id, password, limiter=limiter)

    async def change_password(
        self,
        mailbox_id: str,
        old_password: str,
        new_password: str | None = None,
        *,
        actor: Actor = SYSTEM,
    ) -> str:
        """Re-wrap the private key under a new password; every message stays readable.
        Raises crypto.WrongPassword if the old password is wrong."""
        return await _archive_keys.change_password(
            self._core, mailbox_id, old_password, new_password, actor=actor
        )

    async def reset_password(
        self, mailbox_id: str, new_password: str | None = None, *, actor: Actor = SYSTEM
    ) -> tuple[str, int]:
        """A new key pair under a new password, for when the old password is lost. Every
        message stored so far becomes unreadable, forever; returns (password, how many)."""
        return await _archive_keys.reset_password(self._core, mailbox_id, new_password, actor=actor)

    # -- messages in -------------------------------------------------------------------------------

    def messages(self, mailbox_id: str) -> list[StoredMessage]:
        """The mailbox's messages now, oldest first."""
        return list(self._box(mailbox_id).index)

    def maildrop_page(
        self, mailbox_id: str, after: int, upto: int, key_id: str, limit: int
    ) -> tuple[bytes, list[int], int | None]:
        """A page of a POP3 maildrop: the ids and sizes of at most ``limit`` messages sealed
        to ``key_id`` whose commit comes after ``after`` and at or before ``upto``, oldest
        first, and the seq to go on after (None: the last page)."""
        return self._box(mailbox_id).index.brief(after, upto, key_id, limit)

    def message(self, mailbox_id: str, message_id: str) -> StoredMessage:
        """One message now. Raises ArchiveError for one the mailbox does not serve."""
        box = self._box(mailbox_id)
        found = box.index.get(message_id)
        if found is None:
            raise ArchiveError(f"no message {message_id} in mailbox {box.info.mailbox_id}")
        return found

    def backlog(self, mailbox_id: str) -> Backlog:
        """What the mailbox holds now, cheaply (no copy of its index)."""
        index = self._box(mailbox_id).index
        oldest = next(iter(index), None)
        return Backlog(len(index), index.total_bytes, oldest.message_id if oldest else None)

    def by_key(self, mailbox_id: str) -> dict[str, tuple[int, int]]:
        """The mailbox's messages and their octets by the key they are sealed to (cheap)."""
        return self._box(mailbox_id).index.by_key()

    async def tree_head(self) -> tuple[int, bytes]:
        """The control log's Merkle tree now (SPEC.md 8.1): how many records it covers and
        its head, every one of those records durable (the log is synced while no round
        runs); size -1 when the log has no tree."""
        log = self._core.control.log
        async with self._core.commit_group.held():
            await trio.to_thread.run_sync(log.sync)
            head = await trio.to_thread.run_sync(log.tree_head)
        return head if head is not None else (-1, b"")

    async def mailbox_tree_heads(self) -> list[tuple[str, int, bytes]]:
        """The Merkle tree of every open mailbox log with one (SPEC.md 8.1): mailbox, how
        many records it covers (every one durable) and its head."""
        logs = [
            (box_id, box.writer.log)
            for box_id, box in self._core.boxes.items()
            if box.writer is not None and box.opened.is_set()
        ]

        def heads() -> list[tuple[str, int, bytes]]:
            found = []
            for box_id, log in logs:
                head = log.tree_head()
                if head is not None:
                    found.append((box_id, *head))
            return found

        return await trio.to_thread.run_sync(heads)

    def serving(self, message_id: str) -> list[str]:
        """The open mailboxes that serve a message (one copy each)."""
        return [
            box_id
            for box_id, box in self._core.boxes.items()
            if box.opened.is_set() and box.index.get(message_id) is not None
        ]

    async def commit_record(self, mailbox_id: str, message_id: str) -> tuple[int, bytes]:
        """A message's commit record (SPEC.md 4.2) in its mailbox log: its seq and body."""
        return await _archive_reads.commit_record(self._core, mailbox_id, message_id)

    async def oldest_waiting_at(self, mailbox_id: str) -> datetime | None:
        """When the mailbox's oldest waiting message was committed (its commit record's
        time, in the clear; read once per oldest message), None when none waits."""
        oldest = self.backlog(mailbox_id).oldest
        if oldest is None:
            return None
        cached = self._oldest.get(mailbox_id)
        if cached is not None and cached[0] == oldest:
            return cached[1]
        at = await _archive_reads.committed_at(self._core, mailbox_id, oldest)
        self._oldest[mailbox_id] = (oldest, at)
        return at

    def newest_commit(self, mailbox_id: str) -> int:
        """The seq of the mailbox's newest commit record served, -1 for none."""
        return self._box(mailbox_id).index.last_seq

    def has_source(self, mailbox_id: str, source_key: str) -> bool:
        """Whether the proxy already stored the upstream message with this key."""
        return self._box(mailbox_id).index.has_source(source_key)

    def begin_message(self, mailbox_ids: Sequence[str], source_key: str = "") -> MessageWriter:
        """Start writing one message to one or more mailboxes (sealed once per mailbox, in
        this process); ``source_key`` marks a proxy copy (see ``MessageStored.source_key``)."""
        boxes = self.accepting(mailbox_ids)
        forge = self.key_forge
        targets = []
        for box in boxes:
            assert box.public_key is not None
            mailbox_bytes = bytes.fromhex(box.info.mailbox_id)
            prepared = forge.take(box.public_key, mailbox_bytes) if forge else None
            message_id = prepared.message_id.hex() if prepared else new_message_id()
            targets.append(SealTarget(box.info.mailbox_id, box.public_key, message_id, prepared))
        pending = self.begin_pending(
            [b.info.mailbox_id for b in boxes], [t.message_id for t in targets], source_key
        )
        return MessageWriter(
            targets, pending, max_bytes=self._core.config.max_message_bytes, source_key=source_key
        )

    def accepting(self, mailbox_ids: Sequence[str]) -> list[MailboxState]:
        """The mailboxes a message may go to, each once. Raises MailboxUnavailable for a
        suspended or damaged one, NoSuchMailbox, or ArchiveError for none at all."""
        return _archive_commits.accepting(self._core, mailbox_ids)

    def begin_pending(
        self, mailbox_ids: Sequence[str], message_ids: Sequence[str], source_key: str = ""
    ) -> PendingMessage:
        """The journal's half of a message whose sealing happens elsewhere (a protocol
        worker): one message id per mailbox, chosen by the sealing side."""
        boxes = self.accepting(mailbox_ids)
        if len(boxes) != len(message_ids) or len(set(message_ids)) != len(message_ids):
            raise ArchiveError("one distinct message id per mailbox")
        for message_id in message_ids:
            parse_message_id(message_id)
        return PendingMessage(self, boxes, message_ids, source_key)

    async def commit(
        self, copies: Sequence[CopyCommit], *, also: Sequence[ControlEvent] = ()
    ) -> None:
        """The commit point of a message (SPEC.md 6.2): each copy's commit records durable in
        its mailbox, then their witness durable in the control log, in one round; then the
        copies are served. A mailbox whose key is being reset refuses (the copy is sealed to
        the retired key) with MailboxUnavailable; a failed append rolls back the copies that
        were written and raises LogWriteError. ``also``: control events written with the
        witness (the acceptance's audit record)."""
        await _archive_commits.commit(self._core, copies, also)

    async def expunge(
        self, mailbox_id: str, message_ids: Sequence[str], *, actor: Actor = SYSTEM
    ) -> int:
        """Delete messages: durable before this returns, not served from then on."""
        box = await self._core.opened(mailbox_id)
        present = [m for m in dict.fromkeys(message_ids) if m in box.index]
        return await self._core.expunge_ids(box, present, actor=actor)

    # -- messages out ------------------------------------------------------------------------------

    def read_message(
        self, mailbox_id: str, message_id: str, key: MailboxPrivateKey
    ) -> AsyncGenerator[bytes, None]:
        """Decrypt one message piece by piece (each at most 256 KiB). Raises
        crypto.MessageCorrupt on any tampering, LogCorrupt on a damaged record."""
        return _archive_reads.read_message(self._core, mailbox_id, message_id, key)

    async def read_envelope(
        self, mailbox_id: str, message_id: str, key: MailboxPrivateKey
    ) -> Envelope:
        return await _archive_reads.read_envelope(self._core, mailbox_id, message_id, key)

    # -- compaction (SPEC.md 6.4) ------------------------------------------------------------------

    async def compact(self, mailbox_id: str, *, min_gain: float = 0.5) -> int:
        """Reclaim the bytes of expunged messages, and of messages whose commit never came,
        from the mailbox's sealed segments. A segment is rewritten when at least ``min_gain``
        of it can go, removed when all of it can. Returns the bytes reclaimed.

        Each cut is recorded in the control log (LogCompacted, with the chain values) before
        the segment file is replaced, so verify can follow the chain across it.
        """
        return await _archive_compaction.compact(self._core, mailbox_id, min_gain=min_gain)

    async def maintain(self) -> tuple[int, int]:
        """One pass of housekeeping over every mailbox: compaction, then deletion of the
        segment files whose grace period is over. Returns (bytes reclaimed, files deleted).
        A mailbox that fails is skipped; the next pass tries again."""
        return await _archive_compaction.maintain(self._core)

    async def remove_retired(self, mailbox_id: str) -> int:
        """Delete segment files superseded by compaction once their grace period is over
        (``StoreConfig.compaction_grace``). Returns how many went."""
        return await _archive_compaction.remove_retired(self._core, mailbox_id)
