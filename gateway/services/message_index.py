"""The message index of one mailbox: what serving and taking in its messages needs, packed.

Theory of operation
-------------------
A mailbox may hold millions of messages while its archive stops fetching, so the index keeps
no Python object per message: every field lives in a typed array, one row per message, rows
in the order of their commit records (their seq). A row is about 70 bytes plus 28 per chunk
and 8 or so of hash table (SPEC.md 6.6), against a kilobyte as objects.

- **Lookup by id** goes through an open-addressing hash table of row numbers (linear probing,
  at most half full), keyed by the id's first 8 bytes (Fibonacci hashing).
- **Expunged rows** are marked dead, not moved: the hash table keeps pointing at them and
  lookups skip them. When the dead outnumber the live (and there are a thousand of them),
  the rows are packed and the table rebuilt: linear work, paid for by as many expunges.
- **Order**: a commit usually lands after every earlier one, and its row is appended. One
  that lands out of order (two commits resumed in another order than their round wrote them)
  is inserted in place, and the few rows after it move up one.
- :class:`StoredMessage` is what the rest of the gateway sees of a row, made on demand.

Chunk records of a message arrive before its commit record, which names them by seq; until
then they wait in ``pending_chunks`` (bounded by the messages being written). Chunks no commit
ever names belong to messages that were never acknowledged and are left for compaction.
"""

from __future__ import annotations

import bisect
import operator
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate, compress, repeat

import msgspec

from ..events import MessageStored, decode_message_event
from ..log import Location, LogRecord, RecordKind

__all__ = ["MessageIndex", "StoredMessage"]

_ID_BYTES = 16
_EMPTY = 0  # a free hash slot; a used one holds row + 1
_REPACK_MIN_DEAD = 1024
_FIBONACCI = 0x9E3779B97F4A7C15  # 2**64 / the golden ratio, odd
_MASK64 = (1 << 64) - 1
_ALIVE = bytes.maketrans(b"\x00\x01", b"\x01\x00")  # a dead flag -> a live one


@dataclass(slots=True)
class StoredMessage:
    """One message as served: its id, the seq, location and size of its commit record (the
    wrapped key and sealed envelope stay there on disk, read back when the message is opened),
    and where its chunks are."""

    message_id: str
    seq: int  # of the commit record
    size: int
    key_id: str
    commit: Location
    chunks: list[Location]

    @classmethod
    def of(
        cls, seq: int, commit: Location, chunks: list[Location], event: MessageStored
    ) -> StoredMessage:
        return cls(event.message_id, seq, event.size, event.key_id, commit, chunks)


# The typed arrays of an index, by attribute: what a recovery point carries of it verbatim.
# Per message: what a repack copies as it is; the chunk range it renumbers.
_MESSAGE_ARRAYS = ("_seq", "_size", "_commit_segment", "_commit_offset", "_commit_length", "_key")
_ROW_ARRAYS = (*_MESSAGE_ARRAYS, "_chunk_start", "_chunk_count")
_CHUNK_ARRAYS = ("_chunk_seq", "_chunk_segment", "_chunk_offset", "_chunk_length")
_SNAPSHOT_VERSION = 1


class _Snapshot(msgspec.Struct, array_like=True):
    """An index as a recovery point carries it (SPEC.md 6.7): the arrays as their bytes
    (little-endian, the machine's: a recovery point made on a big-endian machine is refused
    on a little-endian one by its ``byteorder``), the key ids, the source keys, the hash
    table, and the chunks still waiting for their commit (seq, segment, offset, size)."""

    version: int
    byteorder: str
    ids: memoryview  # views into the bytes decoded (one copy, into the arrays, not two)
    rows: list[memoryview]
    chunks: list[memoryview]
    dead: memoryview
    key_ids: list[str]
    source_digests: bytes  # the 32-byte source keys, one after another
    source_others: list[str]
    bits: int
    table: memoryview
    live: int
    total: int
    pending: list[tuple[int, int, int, int]]


class MessageIndex:
    """The live messages of one mailbox log, in commit order, without the expunged."""

    def __init__(self, expunged: Iterable[str] = ()) -> None:
        # Message ids expunged whose records may still be in the log: a commit record met
        # when folding the log is skipped for them. Forgotten once compaction removed them.
        self.expunged: set[str] = set(expunged)
        # Chunk records no commit has named yet: seq -> where.
        self.pending_chunks: dict[int, Location] = {}
        self.problems: list[str] = []
        self._ids = bytearray()
        self._seq = array("q")
        self._size = array("q")
        self._commit_segment = array("q")
        self._commit_offset = array("q")
        self._commit_length = array("i")
        self._key = array("H")  # slot in self._key_ids
        self._chunk_start = array("q")  # first row of the message's chunks
        self._chunk_count = array("i")
        self._dead = bytearray()
        self._chunk_seq = array("q")
        self._chunk_segment = array("q")
        self._chunk_offset = array("q")
        self._chunk_length = array("i")
        self._key_ids: list[str] = []
        self._key_slots: dict[str, int] = {}
        self._bits = 3
        self._table = array("i", bytes(4 << self._bits))
        self._live = 0
        self._bytes = 0
        # Proxy copies by source key, expunged ones too while their commit record lasts
        # (a hex SHA-256 kept as its 32 bytes).
        self._sources: set[bytes | str] = set()

    # -- folding the log -----------------------------------------------------------------

    def fold(self, records: Iterable[LogRecord]) -> None:
        """Records of the mailbox's log met in order (on open, or committed by another
        node): chunks wait for their commit, a commit serves its message."""
        for record in records:
            if record.kind == RecordKind.CHUNK:
                self.add_chunk(record.seq, record.location)
            elif record.kind == RecordKind.EVENT:
                event = decode_message_event(record.body)
                if isinstance(event, MessageStored):
                    self.add_commit(record.seq, record.location, event)

    def add_chunk(self, seq: int, location: Location) -> None:
        self.pending_chunks[seq] = location

    def add_commit(self, seq: int, location: Location, event: MessageStored) -> None:
        """A commit record met in the log (on open, in seq order): the message it names is
        served from now on, with the chunks it names, unless it was expunged."""
        if event.source_key:
            self._sources.add(_source(event.source_key))
        if event.message_id in self.expunged:
            # Compaction may already have taken its chunks; nothing of it is served anyway.
            for chunk_seq in event.chunk_seqs:
                self.pending_chunks.pop(chunk_seq, None)
            return
        chunks = []
        for chunk_seq in event.chunk_seqs:
            chunk = self.pending_chunks.pop(chunk_seq, None)
            if chunk is None:
                self.problems.append(
                    f"message {event.message_id}: chunk record {chunk_seq} missing"
                )
                return
            chunks.append(chunk)
        self.add(StoredMessage.of(seq, location, chunks, event), event.source_key)

    def add(self, message: StoredMessage, source_key: str = "") -> None:
        """A message whose commit is durable and witnessed: served from now on."""
        if source_key:
            self._sources.add(_source(source_key))
        mid = bytes.fromhex(message.message_id)
        if self._find(mid) >= 0:
            return  # folded already (a commit that raced the open)
        slot = self._key_slots.get(message.key_id)
        if slot is None:
            slot = self._key_slots[message.key_id] = len(self._key_ids)
            self._key_ids.append(message.key_id)
        row = len(self._seq)
        if row and self._seq[-1] > message.seq:
            row = bisect.bisect_left(self._seq, message.seq)
        self._insert_row(row, mid, message, slot)
        self._live += 1
        self._bytes += message.size

    def _insert_row(self, row: int, mid: bytes, m: StoredMessage, key: int) -> None:
        at = row * _ID_BYTES
        self._ids[at:at] = mid
        self._seq.insert(row, m.seq)
        self._size.insert(row, m.size)
        self._commit_segment.insert(row, m.commit.segment)
        self._commit_offset.insert(row, m.commit.offset)
        self._commit_length.insert(row, m.commit.size)
        self._key.insert(row, key)
        self._chunk_start.insert(row, len(self._chunk_seq))
        self._chunk_count.insert(row, len(m.chunks))
        self._dead.insert(row, 0)
        for chunk in m.chunks:
            self._chunk_seq.append(chunk.seq)
            self._chunk_segment.append(chunk.segment)
            self._chunk_offset.append(chunk.offset)
            self._chunk_length.append(chunk.size)
        rows = len(self._seq)
        if 2 * rows > len(self._table):
            self._rebuild_table()
            return
        # Rows after it moved up one, the last first: their slots say so.
        for later in range(rows - 1, row, -1):
            self._table[self._slot_of(later, entry=later)] = later + 1
        self._place(row)

    # -- queries -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live

    def __contains__(self, message_id: object) -> bool:
        return isinstance(message_id, str) and self._row(message_id) >= 0

    def __iter__(self) -> Iterator[StoredMessage]:
        """Every live message, oldest commit first."""
        return self.after(-1)

    def after(self, seq: int, upto: int | None = None) -> Iterator[StoredMessage]:
        """The live messages whose commit record comes after ``seq`` (and at or before
        ``upto``), oldest first: a listing that goes on where its last page ended."""
        row = bisect.bisect_right(self._seq, seq)
        while row < len(self._seq):
            if upto is not None and self._seq[row] > upto:
                return
            if not self._dead[row]:
                yield self._message(row)
            row += 1

    def brief(
        self, after: int, upto: int, key_id: str, limit: int
    ) -> tuple[bytes, list[int], int | None]:
        """The ids (16 bytes each, one after another) and sizes of at most ``limit`` live
        messages sealed to ``key_id`` whose commit comes after ``after`` and at or before
        ``upto``, oldest first, and the seq to go on after (None: no more). A POP3 maildrop's
        page: no object per message, whole runs sliced at once."""
        row = bisect.bisect_right(self._seq, after)
        end = bisect.bisect_right(self._seq, upto)
        slot = self._key_slots.get(key_id)
        ids, sizes = bytearray(), list[int]()
        while row < end and len(sizes) < limit and slot is not None:
            # A run of at most 4,096 rows: sliced whole when none is dead or of another key.
            stop = min(end, row + 4096, row + limit - len(sizes))
            if not self._dead.count(1, row, stop) and self._key[row:stop].count(slot) == stop - row:
                ids += self._ids[row * _ID_BYTES : stop * _ID_BYTES]
                sizes += self._size[row:stop].tolist()
            else:
                for r in range(row, stop):
                    if not self._dead[r] and self._key[r] == slot:
                        ids += self._ids[r * _ID_BYTES : (r + 1) * _ID_BYTES]
                        sizes.append(self._size[r])
            row = stop
        more = row < end and slot is not None
        return bytes(ids), sizes, (self._seq[row - 1] if more else None)

    def get(self, message_id: str) -> StoredMessage | None:
        row = self._row(message_id)
        return None if row < 0 else self._message(row)

    def by_key(self) -> dict[str, tuple[int, int]]:
        """The live messages and their octets by the key they are sealed to: one entry but
        after a key reset, when a mailbox holds messages sealed to a retired key."""
        if not self._live:
            return {}
        if len(self._key_ids) == 1:
            return {self._key_ids[0]: (self._live, self._bytes)}
        totals: dict[str, tuple[int, int]] = {}
        for row in compress(range(len(self._seq)), self._dead.translate(_ALIVE)):
            key_id = self._key_ids[self._key[row]]
            count, octets = totals.get(key_id, (0, 0))
            totals[key_id] = (count + 1, octets + self._size[row])
        return totals

    def has_source(self, source_key: str) -> bool:
        return _source(source_key) in self._sources

    @property
    def total_bytes(self) -> int:
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The seq of the newest commit record indexed, -1 for none."""
        return self._seq[-1] if self._seq else -1

    def live_seqs(self) -> set[int]:
        """The seqs of every record a live message needs: its commit and its chunks."""
        seqs: set[int] = set()
        for row in range(len(self._seq)):
            if not self._dead[row]:
                seqs.add(self._seq[row])
                start = self._chunk_start[row]
                seqs.update(self._chunk_seq[start : start + self._chunk_count[row]])
        return seqs

    # -- changes -------------------------------------------------------------------------------

    def expunge(self, message_ids: Iterable[str]) -> None:
        """These messages are gone: never served again."""
        for message_id in message_ids:
            self.expunged.add(message_id)
            row = self._row(message_id)
            if row >= 0:
                self._dead[row] = 1
                self._live -= 1
                self._bytes -= self._size[row]
        dead = len(self._seq) - self._live
        if dead >= _REPACK_MIN_DEAD and dead > self._live:
            self._repack()

    def forget_expunged(self, message_ids: Iterable[str]) -> None:
        """Compaction removed these messages' records: nothing of them is left to skip."""
        self.expunged.difference_update(message_ids)

    def relocate(self, moved: Mapping[int, Location]) -> None:
        """Compaction moved these records (by seq) to a new generation of their segment."""
        if not moved:
            return
        low, high = min(moved), max(moved)
        for row in range(len(self._seq)):
            if low <= self._seq[row] <= high and (at := moved.get(self._seq[row])) is not None:
                self._commit_segment[row] = at.segment
                self._commit_offset[row] = at.offset
                self._commit_length[row] = at.size
        for i in range(len(self._chunk_seq)):
            seq = self._chunk_seq[i]
            if low <= seq <= high and (at := moved.get(seq)) is not None:
                self._chunk_segment[i] = at.segment
                self._chunk_offset[i] = at.offset
                self._chunk_length[i] = at.size

    # -- recovery points -----------------------------------------------------------------------

    def snapshot(self, pending: Iterable[Location] = ()) -> bytes:
        """The index as bytes, with the chunks of messages still being written (``pending``,
        besides those the log's open found waiting): what a recovery point carries."""
        waiting = {c.seq: c for c in (*self.pending_chunks.values(), *pending)}
        return msgspec.msgpack.encode(
            _Snapshot(
                version=_SNAPSHOT_VERSION,
                byteorder=sys.byteorder,
                ids=memoryview(self._ids),
                rows=[memoryview(getattr(self, name)) for name in _ROW_ARRAYS],
                chunks=[memoryview(getattr(self, name)) for name in _CHUNK_ARRAYS],
                dead=memoryview(self._dead),
                key_ids=list(self._key_ids),
                source_digests=b"".join(k for k in self._sources if isinstance(k, bytes)),
                source_others=[k for k in self._sources if isinstance(k, str)],
                bits=self._bits,
                table=memoryview(self._table),
                live=self._live,
                total=self._bytes,
                pending=[(c.seq, c.segment, c.offset, c.size) for c in waiting.values()],
            )
        )

    @classmethod
    def restore(cls, data: bytes | memoryview, expunged: Iterable[str] = ()) -> MessageIndex:
        """An index from :meth:`snapshot`'s bytes, then the ``expunged`` ids taken out.
        Raises ValueError for bytes that are not one."""
        try:
            snap = msgspec.msgpack.decode(data, type=_Snapshot)
        except msgspec.DecodeError as exc:
            raise ValueError(f"index snapshot: {exc}") from None
        if snap.version != _SNAPSHOT_VERSION or snap.byteorder != sys.byteorder:
            raise ValueError("index snapshot of another version or byte order")
        index = cls()
        rows = len(snap.ids) // _ID_BYTES
        try:
            for name, raw in zip(_ROW_ARRAYS, snap.rows, strict=True):
                getattr(index, name).frombytes(raw)
            for name, raw in zip(_CHUNK_ARRAYS, snap.chunks, strict=True):
                getattr(index, name).frombytes(raw)
            index._table = array("i")
            index._table.frombytes(snap.table)
        except ValueError as exc:
            raise ValueError(f"index snapshot: {exc}") from None
        chunks = len(index._chunk_seq)
        if (
            len(snap.ids) % _ID_BYTES
            or len(snap.dead) != rows
            or any(len(getattr(index, name)) != rows for name in _ROW_ARRAYS)
            or any(len(getattr(index, name)) != chunks for name in _CHUNK_ARRAYS)
            or len(index._table) != 1 << snap.bits
            or 2 * rows > len(index._table)
            or (rows and max(index._key) >= len(snap.key_ids))
        ):
            raise ValueError("index snapshot: its parts do not fit together")
        index._ids = bytearray(snap.ids)
        index._dead = bytearray(snap.dead)
        index._key_ids = list(snap.key_ids)
        index._key_slots = {key_id: slot for slot, key_id in enumerate(snap.key_ids)}
        digests = snap.source_digests
        if len(digests) % 32:
            raise ValueError("index snapshot: source keys cut short")
        index._sources = {digests[i : i + 32] for i in range(0, len(digests), 32)}
        index._sources.update(snap.source_others)
        index._bits = snap.bits
        index._live, index._bytes = snap.live, snap.total
        index.pending_chunks = {s: Location(g, o, n, s) for s, g, o, n in snap.pending}
        index.expunge(expunged)
        return index

    # -- rows and the hash table ---------------------------------------------------------------

    def _message(self, row: int) -> StoredMessage:
        at = row * _ID_BYTES
        start = self._chunk_start[row]
        seq = self._seq[row]
        return StoredMessage(
            message_id=self._ids[at : at + _ID_BYTES].hex(),
            seq=seq,
            size=self._size[row],
            key_id=self._key_ids[self._key[row]],
            commit=Location(
                self._commit_segment[row], self._commit_offset[row], self._commit_length[row], seq
            ),
            chunks=[
                Location(
                    self._chunk_segment[i],
                    self._chunk_offset[i],
                    self._chunk_length[i],
                    self._chunk_seq[i],
                )
                for i in range(start, start + self._chunk_count[row])
            ],
        )

    def _row(self, message_id: str) -> int:
        """The live row of a message, -1 for none."""
        try:
            mid = bytes.fromhex(message_id)
        except ValueError:
            return -1
        row = self._find(mid)
        return -1 if row < 0 or self._dead[row] else row

    def _find(self, mid: bytes) -> int:
        """The row holding this id (live or dead), -1 for none."""
        if len(mid) != _ID_BYTES:
            return -1
        table, ids = self._table, self._ids
        mask = len(table) - 1
        slot = self._home(mid)
        while (entry := table[slot]) != _EMPTY:
            at = (entry - 1) * _ID_BYTES
            if ids[at : at + _ID_BYTES] == mid:
                return entry - 1
            slot = (slot + 1) & mask
        return -1

    def _slot_of(self, row: int, *, entry: int) -> int:
        """The slot holding ``entry`` for the id in ``row``."""
        table = self._table
        mask = len(table) - 1
        slot = self._home(self._ids[row * _ID_BYTES : (row + 1) * _ID_BYTES])
        while table[slot] != entry:
            slot = (slot + 1) & mask
        return slot

    def _place(self, row: int) -> None:
        table = self._table
        mask = len(table) - 1
        slot = self._home(self._ids[row * _ID_BYTES : (row + 1) * _ID_BYTES])
        while table[slot] != _EMPTY:
            slot = (slot + 1) & mask
        table[slot] = row + 1

    def _home(self, mid: bytes | bytearray) -> int:
        """An id's first slot: Fibonacci hashing of its first 8 bytes (ids are random; the
        multiplication spreads any that are not), the same in every process."""
        mixed = (int.from_bytes(mid[:8], "little") * _FIBONACCI) & _MASK64
        return mixed >> (64 - self._bits)

    def _rebuild_table(self) -> None:
        """A table for every row, at most half full. The home slots are computed in C-level
        loops (``map`` over the ids' first eight bytes); only the placing is a Python loop."""
        self._bits = 3
        while (1 << self._bits) < 2 * len(self._seq):
            self._bits += 1
        table = self._table = array("i", bytes(4 << self._bits))
        mask = len(table) - 1
        firsts = array("Q", self._ids)[0::2]
        if sys.byteorder == "big":
            firsts.byteswap()  # as _home reads them: little-endian
        homes = map(
            operator.rshift,
            map(operator.and_, map(operator.mul, firsts, repeat(_FIBONACCI)), repeat(_MASK64)),
            repeat(64 - self._bits),
        )
        for entry, home in enumerate(homes, 1):
            slot = home
            while table[slot]:
                slot = (slot + 1) & mask
            table[slot] = entry

    def _repack(self) -> None:
        """Drop the dead rows (and their chunks) and rebuild the hash table; the arrays are
        filtered in C-level loops (``itertools.compress``)."""
        rows = len(self._seq)
        live = self._dead.translate(_ALIVE)  # 1 for a live row
        if self._chunk_count.count(1) == rows and self._chunk_start == array("q", range(rows)):
            live_chunks = live  # one chunk a message, in row order: the usual shape
        else:
            live_chunks = bytearray(len(self._chunk_seq))
            for row in compress(range(rows), live):
                start, count = self._chunk_start[row], self._chunk_count[row]
                live_chunks[start : start + count] = b"\x01" * count
        ids = array("Q", self._ids)
        self._ids = bytearray(_interleave(compress(ids[0::2], live), compress(ids[1::2], live)))
        starts = self._chunk_start
        # Kept chunks keep their order: a chunk's new index is the kept ones before it.
        new_index = array("q", accumulate(live_chunks, initial=0))
        counts = array("i", compress(self._chunk_count, live))
        for name in _MESSAGE_ARRAYS:
            old = getattr(self, name)
            setattr(self, name, array(old.typecode, compress(old, live)))
        self._chunk_count = counts
        self._chunk_start = array("q", map(new_index.__getitem__, compress(starts, live)))
        self._dead = bytearray(len(counts))
        for name in ("_chunk_seq", "_chunk_segment", "_chunk_offset", "_chunk_length"):
            old = getattr(self, name)
            setattr(self, name, array(old.typecode, compress(old, live_chunks)))
        self._rebuild_table()


def _interleave(first: Iterable[int], second: Iterable[int]) -> bytes:
    """Two sequences of u64 as one, alternating: the first and second halves of each id."""
    low, high = array("Q", first), array("Q", second)
    both = array("Q", bytes(16 * len(low)))
    both[0::2], both[1::2] = low, high
    return both.tobytes()


def _source(source_key: str) -> bytes | str:
    """A source key as kept: a hex SHA-256 as its 32 bytes, anything else as it is."""
    if len(source_key) == 64:
        try:
            return bytes.fromhex(source_key)
        except ValueError:
            pass
    return source_key
