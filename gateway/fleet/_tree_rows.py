"""A log's Merkle tree in the fleet store (SPEC.md 8.1, 17.2): the post-order hashes a tree
file holds, 1,024 to a row of ``gateway_trees``, and the tree's size and frontier on the
log's row of ``gateway_logs``.

Theory of operation
-------------------
An append extends the tree inside its own transaction (under the log's row lock): the
frontier on the log's row gives every hash the new leaves complete, the new hashes go to the
end of the last chunk and into new ones, and the size and frontier move with the log's end.
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
        self._chunks: dict[int, bytes] = {}
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
        """Put ``data`` at byte ``at`` of the post-order hashes, which end there."""
        while data:
            chunk, offset = divmod(at, CHUNK_BYTES)
            piece = data[: CHUNK_BYTES - offset]
            if offset:
                self.conn.execute(
                    "UPDATE gateway_trees SET hashes = hashes || %s "
                    "WHERE log_id = %s AND chunk = %s",
                    (piece, self.log_id, chunk),
                )
            else:
                self.conn.execute(
                    "INSERT INTO gateway_trees (log_id, chunk, hashes) VALUES (%s, %s, %s)",
                    (self.log_id, chunk, piece),
                )
            at, data = at + len(piece), data[len(piece) :]
        self._chunks.clear()
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
            self._length = 0 if row is None else int(row[0]) * CHUNK_BYTES + int(row[1])
        return self._length

    def __getitem__(self, index: slice, /) -> bytes:
        start, stop, _step = index.indices(len(self))
        out = bytearray()
        while start < stop:
            chunk, offset = divmod(start, CHUNK_BYTES)
            hashes = self._chunk(chunk)
            piece = hashes[offset : offset + stop - start]
            if not piece:
                break
            out += piece
            start += len(piece)
        return bytes(out)

    def _chunk(self, chunk: int) -> bytes:
        found = self._chunks.get(chunk)
        if found is None:
            row = self.conn.execute(
                "SELECT hashes FROM gateway_trees WHERE log_id = %s AND chunk = %s",
                (self.log_id, chunk),
            ).fetchone()
            found = self._chunks[chunk] = bytes(row[0]) if row else b""
        return found
