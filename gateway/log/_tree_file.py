"""A log's Merkle tree on disk (SPEC.md 8.1): the hash of every complete aligned block of its
records, in post-order, in one append-only file beside its segments.

Theory of operation
-------------------
``merkle-tree`` holds 32-byte hashes in the order ``gateway.merkle`` appends them, so the tree
of the first ``n`` records is exactly the file's first ``tree_nodes(n)`` hashes: any earlier
head, and any proof against it, is read from the file without touching the records
(:func:`read_tree`). The file only ever grows while the log does; it shrinks only with the
log (a batch undone, a torn tail cut). Compaction removes records but not their hashes, so
a proof signed before a compaction still verifies after it.

The file is derived from the records, and is not synced with every batch: on open, a file
behind its log is brought up to date from the records, and one ahead of it (the log was cut
back) is cut to match. It *is* synced before compaction or archiving takes records away
(:meth:`TreeFile.sync`): from then on it is the only place their hashes are kept. A file
that cannot be brought up to date because records it lacks are gone leaves the log without
a tree (:attr:`SegmentLog.tree` is None, with the reason in ``tree_missing``).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from ..merkle import (
    HASH_SIZE,
    MerkleTree,
    frontier_append,
    frontier_of,
    leaves_in,
    record_leaf_hash,
    tree_nodes,
)
from ._files import write_all

TREE_FILE = "merkle-tree"


class TreeFile:
    """The appendable tree of one log. Appends come from the log's one writer; reads of
    what was written (:func:`read_tree`) may come from anywhere at any time."""

    def __init__(self, path: Path, fd: int, size: int, frontier: list[bytes]) -> None:
        self.path = path
        self._fd = fd
        self.size = size  # leaves written to the file
        self._frontier = frontier
        self._staged: list[bytes] = []
        self._staged_size = size

    @classmethod
    def open(cls, directory: Path) -> TreeFile:
        """Open (or create, empty) a log's tree file; a hash an append cut short is cut."""
        path = directory / TREE_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            length = os.fstat(fd).st_size
            size = leaves_in(length // HASH_SIZE)
            if length != tree_nodes(size) * HASH_SIZE:
                os.ftruncate(fd, tree_nodes(size) * HASH_SIZE)
            frontier = frontier_of(_Reader(fd), size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, size, frontier)

    def stage(self, seq: int, kind: int, body: bytes) -> None:
        """Add the record ``seq`` (the next leaf) to what :meth:`write` writes."""
        if seq != self._staged_size:
            raise ValueError(f"record {seq} is not the tree's next leaf ({self._staged_size})")
        hashes = frontier_append(self._frontier, seq, record_leaf_hash(seq, kind, body))
        self._staged.append(hashes)
        self._staged_size += 1

    def write(self) -> None:
        """Write what was staged (raises OSError; the caller then cuts back)."""
        if self._staged:
            write_all(self._fd, b"".join(self._staged))
            self._staged.clear()
            self.size = self._staged_size

    def cut(self, size: int) -> None:
        """Make the file the tree of the first ``size`` leaves (at most as many as it has),
        forgetting anything staged."""
        self._staged.clear()
        size = min(size, self.size)
        os.ftruncate(self._fd, tree_nodes(size) * HASH_SIZE)
        self.size = self._staged_size = size
        self._frontier = frontier_of(_Reader(self._fd), size)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class _Reader:
    """A file's bytes read by slice (for ``frontier_of``)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __len__(self) -> int:
        return os.fstat(self._fd).st_size

    def __getitem__(self, index: slice, /) -> bytes:
        start, stop, _step = index.indices(len(self))
        return os.pread(self._fd, stop - start, start)


def tree_hashes(directory: Path) -> mmap.mmap | bytes | None:
    """Every hash a log's tree file holds, in post-order, mapped read-only (verify and
    copies read them whole); None when the log has no tree file."""
    try:
        with open(directory / TREE_FILE, "rb") as f:
            length = os.fstat(f.fileno()).st_size
            return mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ) if length else b""
    except FileNotFoundError:
        return None


def read_tree(directory: Path, size: int | None = None) -> MerkleTree:
    """The tree of a log's first ``size`` records (all the file holds by default), read from
    its file (read-only; safe while the log is written). Raises FileNotFoundError when the
    log has no tree file, ValueError when it holds fewer than ``size`` leaves."""
    with open(directory / TREE_FILE, "rb") as f:
        length = os.fstat(f.fileno()).st_size
        held = leaves_in(length // HASH_SIZE)
        size = held if size is None else size
        if size > held:
            raise ValueError(f"the tree file holds {held} records, not {size}")
        if size == 0:
            return MerkleTree()
        hashes = mmap.mmap(f.fileno(), tree_nodes(size) * HASH_SIZE, access=mmap.ACCESS_READ)
    return MerkleTree.view(hashes, size)
