"""Merkle trees over a log's records, RFC 9162 (Certificate Transparency 2.0) section 2.1:
tree heads, inclusion proofs and consistency proofs, and their verification.

Theory of operation
-------------------
A leaf's hash is SHA-256(0x00 || leaf), a node's SHA-256(0x01 || left || right); the tree of
``n`` leaves splits at the largest power of two below ``n`` (RFC 9162 2.1.1). A
:class:`MerkleTree` keeps the hash of every complete aligned block of 2**level leaves, for
every level (32 bytes each: about 64 bytes a leaf in all), so the head of any prefix of the
log, and any proof against it, is computed from at most 2 log2(n) stored hashes: no proof
walks the leaves.

The hashes are kept in *post-order*, the order in which they become known: a leaf's hash,
then the hash of every block it completes (``node_position``). Appending only ever adds to
the end, so the same bytes serve as an append-only file (``gateway.log`` keeps one beside
each log) and a tree of ``n`` leaves is exactly its first ``tree_nodes(n)`` hashes: any
earlier head, and any proof against it, stays computable from a longer file.
:meth:`MerkleTree.view` reads a tree from such bytes (an ``mmap``, say). Pure: no I/O; the
caller decides what a leaf is and where the tree lives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

__all__ = [
    "HASH_SIZE",
    "MerkleTree",
    "frontier_append",
    "frontier_of",
    "frontier_root",
    "leaf_hash",
    "leaves_in",
    "node_hash",
    "node_position",
    "record_leaf",
    "record_leaf_hash",
    "tree_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_EMPTY_ROOT = hashlib.sha256(b"").digest()  # RFC 9162 2.1.1: the head of no leaves


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def record_leaf(seq: int, kind: int, body: bytes) -> bytes:
    """A log record as a leaf: its seq (8 bytes, big-endian), its kind (1 byte) and its body
    (SPEC.md 8.1): what it says, apart from how it is framed on disk."""
    return seq.to_bytes(8, "big") + bytes([kind]) + body


def record_leaf_hash(seq: int, kind: int, body: bytes) -> bytes:
    """``leaf_hash(record_leaf(seq, kind, body))`` without copying the body."""
    digest = hashlib.sha256(b"\x00" + seq.to_bytes(8, "big") + bytes([kind]))
    digest.update(body)
    return digest.digest()


def tree_nodes(size: int) -> int:
    """How many hashes a tree of ``size`` leaves keeps: one per complete aligned block."""
    return 2 * size - size.bit_count()


def node_position(level: int, index: int) -> int:
    """Where the hash of block ``index`` of 2**level leaves is in post-order: after every
    hash of the leaves before the block, and every hash inside it."""
    return tree_nodes(index << level) + (1 << (level + 1)) - 2


def leaves_in(nodes: int) -> int:
    """The most leaves whose tree fits in ``nodes`` hashes (the rest of a longer run of
    hashes is an append a crash cut short)."""
    size = (nodes + 64) // 2
    while tree_nodes(size) > nodes:
        size -= 1
    return size


def frontier_append(frontier: list[bytes], size: int, hash_of_leaf: bytes) -> bytes:
    """Add a leaf to a *frontier*: the roots of the complete subtrees a tree of ``size``
    leaves splits into, largest first (one per set bit of ``size``). All a log needs to
    know its tree's head as it grows: log2(size) hashes, updated in place. Returns the
    hashes that become known, in post-order: the leaf's, then each block it completes."""
    current, carried = hash_of_leaf, size
    known = [current]
    while carried & 1:
        current = node_hash(frontier.pop(), current)
        known.append(current)
        carried >>= 1
    frontier.append(current)
    return b"".join(known)


def frontier_root(frontier: Sequence[bytes]) -> bytes:
    """The head of the tree a frontier stands for (RFC 9162 2.1.1)."""
    if not frontier:
        return _EMPTY_ROOT
    root = frontier[-1]
    for subtree in reversed(frontier[:-1]):
        root = node_hash(subtree, root)
    return root


class _Hashes(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: slice, /) -> bytes | bytearray: ...


def frontier_of(hashes: _Hashes, size: int) -> list[bytes]:
    """The frontier of the tree of ``size`` leaves whose hashes, in post-order, are
    ``hashes``."""
    frontier, start = [], 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            at = node_position(level, start >> level) * HASH_SIZE
            frontier.append(bytes(hashes[at : at + HASH_SIZE]))
            start += 1 << level
    return frontier


def _split(size: int) -> int:
    """The largest power of two below ``size`` (size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


class MerkleTree:
    """The Merkle tree of a log's leaves, appended in order, or read from hashes kept in
    post-order (:meth:`view`)."""

    def __init__(self) -> None:
        self._hashes: _Hashes = bytearray()
        self._size = 0
        self._frontier: list[bytes] = []

    @classmethod
    def view(cls, hashes: _Hashes, size: int) -> MerkleTree:
        """The tree of the first ``size`` leaves whose hashes, in post-order, begin
        ``hashes`` (read-only: nothing can be appended to a view)."""
        if len(hashes) < tree_nodes(size) * HASH_SIZE:
            raise ValueError(f"{len(hashes) // HASH_SIZE} hashes hold no tree of {size} leaves")
        tree = cls()
        tree._hashes, tree._size = hashes, size
        return tree

    @property
    def hashes(self) -> bytes:
        """Every hash the tree keeps, in post-order."""
        return bytes(self._hashes[: tree_nodes(self._size) * HASH_SIZE])

    def __len__(self) -> int:
        return self._size

    def append(self, hash_of_leaf: bytes) -> None:
        """Add the next leaf, by its leaf hash (``leaf_hash``)."""
        if len(hash_of_leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        if not isinstance(self._hashes, bytearray):
            raise TypeError("a view of stored hashes is read-only")
        self._hashes += frontier_append(self._frontier, self._size, hash_of_leaf)
        self._size += 1

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self._block(0, index)

    def root(self, size: int | None = None) -> bytes:
        """The head of the first ``size`` leaves (all of them by default)."""
        size = len(self) if size is None else size
        self._check_size(size)
        return self._hash(0, size) if size else _EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]) of RFC 9162 2.1.3.1: the leaf's audit path, lowest first."""
        size = len(self) if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size}")
        return self._path(index, 0, size)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """PROOF(old, D[new]) of RFC 9162 2.1.4.1: the tree of ``new`` leaves extends the
        tree of ``old`` (0 < old <= new)."""
        new = len(self) if new is None else new
        self._check_size(new)
        if not 0 < old <= new:
            raise ValueError(f"no consistency proof from {old} to {new}")
        return self._subproof(old, 0, new, True)

    # -- inside --------------------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= len(self):
            raise ValueError(f"the tree has {len(self)} leaves, not {size}")

    def _block(self, level: int, index: int) -> bytes:
        at = node_position(level, index) * HASH_SIZE
        return bytes(self._hashes[at : at + HASH_SIZE])

    def _hash(self, start: int, size: int) -> bytes:
        """MTH(D[start:start+size]) for a range a proof of this tree names: an aligned
        complete block, or one that ends a prefix (split at the largest power of two)."""
        if size & (size - 1) == 0 and start % size == 0:
            return self._block(size.bit_length() - 1, start // size)
        k = _split(size)
        return node_hash(self._hash(start, k), self._hash(start + k, size - k))

    def _path(self, index: int, start: int, size: int) -> list[bytes]:
        if size == 1:
            return []
        k = _split(size)
        if index < k:
            return [*self._path(index, start, k), self._hash(start + k, size - k)]
        return [*self._path(index - k, start + k, size - k), self._hash(start, k)]

    def _subproof(self, old: int, start: int, size: int, whole: bool) -> list[bytes]:
        if old == size:
            return [] if whole else [self._hash(start, size)]
        k = _split(size)
        if old <= k:
            return [*self._subproof(old, start, k, whole), self._hash(start + k, size - k)]
        return [*self._subproof(old - k, start + k, size - k, False), self._hash(start, k)]


def verify_inclusion(
    hash_of_leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 2.1.3.2: whether ``proof`` shows the leaf at ``index`` in the tree of
    ``size`` leaves whose head is ``root``."""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn, r = index, size - 1, hash_of_leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2: whether ``proof`` shows the tree of ``new`` leaves (head
    ``new_root``) extends the tree of ``old`` (head ``old_root``)."""
    if not 0 < old <= new or any(len(p) != HASH_SIZE for p in proof):
        return False
    if old == new:
        return not proof and old_root == new_root
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old head is a node of the new tree
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
