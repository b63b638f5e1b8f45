"""A log's Merkle tree in the fleet store (SPEC.md 8.1, 17.2): the post-order hashes a tree
file holds, in rows of ``gateway_trees`` (each keyed by the index of its first hash, at most
1,024 hashes), and the tree's size and frontier on the log's row of ``gateway_logs``.

Theory of operation
-------------------
An append extends the tree inside its own transaction (under the log's row lock): the
frontier on the log's row gives every hash the new leaves complete, the new hashes go into a
row of their own (never onto an existing one: PostgreSQL would write that row again whole, and
its WAL with it), and the size and frontier move with the log's end.
A tree whose size is not the log's end (a log copied in without its tree) is left as it is:
that log has no tree until it is copied again. Reading is lazy: :class:`TreeRows` fetches
only the chunks a head or a proof touches (at most 2 log2(n) hashes), so proofs never read
the whole tree. Compaction never touches these rows: removed records keep their leaves.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ..merkle import HASH_SIZE, MerkleTree, frontier_append, record_leaf_hash, tree_nodes

__all__ = ["CHUNK_BYTES", "TreeRows", "split_frontier"]

CHUNK_BYTES = 1024 * HASH_SIZE


def split_frontier(packed: bytes) -> list[bytes]:
    return [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)]


class TreeRows:
    """One log's tree rows, through the caller's connection (and transaction)."""

    def __init__(self, conn: psycopg.Connection[Any], log_id: bytes) -> None:
        self.conn = conn
        self.log_id = log_id
        self._rows: dict[int, bytes] = {}  # read so far: first byte -> hashes
        self._length: int | None = None

    def extend(
        self, size: int, frontier: list[bytes], leaves: list[tuple[int, int, bytes]]
    ) -> None:
        """Add ``leaves`` (seq, kind, body), the tree being ``size`` leaves with
        ``frontier``, which is updated in place."""
        grown = bytearray()
        for seq, kind, body in leaves:
            grown += frontier_append(frontier, size, record_leaf_hash(seq, kind, body))
            size += 1
        self.write(tree_nodes(size - len(leaves)) * HASH_SIZE, bytes(grown))

    def write(self, at: int, data: bytes) -> None:
        """Put ``data`` at byte ``at`` of the post-order hashes, which end there: new rows
        of at most :data:`CHUNK_BYTES`."""
        rows = []
        while data:
            piece, data = data[:CHUNK_BYTES], data[CHUNK_BYTES:]
            rows.append((self.log_id, at // HASH_SIZE, piece))
            at += len(piece)
        self.conn.cursor().executemany(
            "INSERT INTO gateway_trees (log_id, chunk, hashes) VALUES (%s, %s, %s)", rows
        )
        self._rows.clear()
        self._length = None

    def view(self, size: int) -> MerkleTree:
        """The tree of the first ``size`` leaves, read lazily."""
        return MerkleTree.view(self, size)

    # The post-order hashes as bytes sliced by MerkleTree (only the chunks touched are read).

    def __len__(self) -> int:
        if self._length is None:
            row = self.conn.execute(
                "SELECT chunk, octet_length(hashes) FROM gateway_trees WHERE log_id = %s "
                "ORDER BY chunk DESC LIMIT 1",
                (self.log_id,),
            ).fetchone()
            self._length = 0 if row is None else int(row[0]) * HASH_SIZE + int(row[1])
        return self._length

    def __getitem__(self, index: slice, /) -> bytes:
        start, stop, _step = index.indices(len(self))
        out = bytearray()
        while start < stop:
            first, hashes = self._row_at(start)
            piece = hashes[start - first : stop - first]
            if not piece:
                break
            out += piece
            start += len(piece)
        return bytes(out)

    def _row_at(self, at: int) -> tuple[int, bytes]:
        """The row holding byte ``at``: its first byte and its hashes."""
        for first, hashes in self._rows.items():
            if first <= at < first + len(hashes):
                return first, hashes
        row = self.conn.execute(
            "SELECT chunk, hashes FROM gateway_trees WHERE log_id = %s AND chunk <= %s "
            "ORDER BY chunk DESC LIMIT 1",
            (self.log_id, at // HASH_SIZE),
        ).fetchone()
        if row is None:
            return at, b""
        first = int(row[0]) * HASH_SIZE
        hashes = self._rows[first] = bytes(row[1])
        return first, hashes
