"""``gateway verify``: each log's Merkle tree file against its records and its signed
checkpoints (SPEC.md 8 and 8.1).

Theory of operation
-------------------
A :class:`TreeCheck` reads a log's ``merkle-tree`` file alongside the log's records, once,
as they pass: every record's leaf hash must be the one the file holds at its seq, and every
hash above the leaves must be the hash of the two below it (recomputed in post-order as the
leaves go by, with a frontier of log2(n) hashes). Leaves of records compaction removed are
taken as the file holds them: from then on the file is the only place they are kept, and
the checkpoints signed before vouch for them. Each checkpoint recorded in the control log
(``CheckpointSigned``) must then be the head of the file's first ``size`` leaves: a tree
rewritten since, even with the chain recomputed, no longer leads to the heads it signed.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

from .log import TREE_FILE, LogRecord, RecordKind, tree_hashes
from .merkle import (
    HASH_SIZE,
    MerkleTree,
    frontier_append,
    leaves_in,
    record_leaf_hash,
    tree_nodes,
)

__all__ = ["SignedHead", "TreeCheck"]


@dataclass(frozen=True, slots=True)
class SignedHead:
    """A checkpoint the control log records: ``root`` is the head of ``size`` records."""

    size: int
    root: bytes
    seq: int  # of its CheckpointSigned record


@dataclass
class TreeCheck:
    """One log's tree file, checked as its records pass (:meth:`see`), then whole."""

    directory: Path
    problems: list[tuple[str, int | None]] = field(default_factory=list)  # (what, offset)
    notes: list[str] = field(default_factory=list)
    _hashes: mmap.mmap | bytes = b""
    _held: int = 0  # leaves the file holds
    _checked: int = 0  # leaves whose hashes (and those they complete) were checked
    _frontier: list[bytes] = field(default_factory=list)
    _missing: bool = False

    def __post_init__(self) -> None:
        hashes = tree_hashes(self.directory)
        if hashes is None:
            self._missing = True
            return
        self._hashes = hashes
        self._held = leaves_in(len(hashes) // HASH_SIZE)

    def see(self, record: LogRecord) -> None:
        """A record of the log, in order."""
        if self._missing or self.problems or record.kind == RecordKind.GAP:
            return
        if record.seq >= self._held:
            return  # written after the tree file was read (finish notes it)
        self._advance(record.seq)
        at = tree_nodes(record.seq) * HASH_SIZE
        if self._hashes[at : at + HASH_SIZE] != record_leaf_hash(
            record.seq, record.kind, record.body
        ):
            self.problems.append(
                (f"record {record.seq}'s leaf hash is not the one the tree file holds", at)
            )

    def finish(self, records: int, heads: list[SignedHead]) -> None:
        """The log's records are read (``records``: the seq after its last); check the
        rest of the file and every signed head."""
        where = self.directory / TREE_FILE
        if self._missing:
            if records:
                self.notes.append(f"{where}: no tree file (the next open builds it)")
            return
        if self.problems:
            return
        self._advance(self._held)
        if self.problems:
            return
        if self._held < records:
            self.notes.append(
                f"{where}: holds {self._held} of the {records} records (written after them; "
                "the next open brings it up to date)"
            )
        elif self._held > records:
            self.notes.append(
                f"{where}: holds {self._held - records} record(s) past the log's end "
                "(the next open cuts them)"
            )
        for head in heads:
            if head.size > self._held:
                if head.size <= records:
                    self.problems.append(
                        (
                            f"the checkpoint of record {head.seq} covers {head.size} records; "
                            f"the tree file holds {self._held}",
                            None,
                        )
                    )
                continue
            if MerkleTree.view(self._hashes, head.size).root() != head.root:
                self.problems.append(
                    (
                        f"the tree of the first {head.size} records is not the one signed "
                        f"by the checkpoint of control record {head.seq}: a rewritten history",
                        None,
                    )
                )

    def _advance(self, upto: int) -> None:
        """Check every hash the leaves before ``upto`` complete."""
        hashes, frontier = self._hashes, self._frontier
        while self._checked < upto:
            size = self._checked
            at = tree_nodes(size) * HASH_SIZE
            known = frontier_append(frontier, size, bytes(hashes[at : at + HASH_SIZE]))
            for level in range(1, len(known) // HASH_SIZE):
                node = at + level * HASH_SIZE
                if hashes[node : node + HASH_SIZE] != known[level * HASH_SIZE :][:HASH_SIZE]:
                    first = size + 1 - (1 << level)  # the block's first leaf: where it starts
                    self.problems.append(
                        (
                            f"the hashes of records {first}..{size} do not lead to the one "
                            f"above them (at offset {node})",
                            tree_nodes(first) * HASH_SIZE,
                        )
                    )
                    return
            self._checked += 1
