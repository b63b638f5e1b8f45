"""Merkle trees over a log's records, RFC 9162 (Certificate Transparency 2.0) section 2.1:
tree heads, inclusion proofs and consistency proofs, and their verification.

Theory of operation
-------------------
A leaf's hash is SHA-256(0x00 || leaf), a node's SHA-256(0x01 || left || right); the tree of
``n`` leaves splits at the largest power of two below ``n`` (RFC 9162 2.1.1). A
:class:`MerkleTree` keeps, per level, the hash of every complete aligned block of 2**level
leaves (a level is a ``bytearray`` of 32-byte hashes: about 64 bytes a leaf in all), so the
head of any prefix of the log, and any proof against it, is computed from at most
2 log2(n) stored hashes: no proof walks the leaves. Appending a leaf completes at most one
block per level. Pure: no I/O; the caller decides what a leaf is and where the tree lives.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "HASH_SIZE",
    "MerkleTree",
    "frontier_append",
    "frontier_root",
    "leaf_hash",
    "node_hash",
    "record_leaf",
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


def frontier_append(frontier: list[bytes], size: int, hash_of_leaf: bytes) -> None:
    """Add a leaf to a *frontier*: the roots of the complete subtrees a tree of ``size``
    leaves splits into, largest first (one per set bit of ``size``). All a log needs to
    know its tree's head as it grows: log2(size) hashes, updated in place."""
    current, carried = hash_of_leaf, size
    while carried & 1:
        current = node_hash(frontier.pop(), current)
        carried >>= 1
    frontier.append(current)


def frontier_root(frontier: Sequence[bytes]) -> bytes:
    """The head of the tree a frontier stands for (RFC 9162 2.1.1)."""
    if not frontier:
        return _EMPTY_ROOT
    root = frontier[-1]
    for subtree in reversed(frontier[:-1]):
        root = node_hash(subtree, root)
    return root


def _split(size: int) -> int:
    """The largest power of two below ``size`` (size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)


class MerkleTree:
    """The Merkle tree of a log's leaves, appended in order."""

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]

    def __len__(self) -> int:
        return len(self._levels[0]) // HASH_SIZE

    def append(self, hash_of_leaf: bytes) -> None:
        """Add the next leaf, by its leaf hash (``leaf_hash``)."""
        if len(hash_of_leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        current, level = hash_of_leaf, 0
        while True:
            hashes = self._levels[level]
            hashes += current
            count = len(hashes) // HASH_SIZE
            if count % 2:
                return
            left = bytes(hashes[-2 * HASH_SIZE : -HASH_SIZE])
            current = node_hash(left, current)
            level += 1
            if level == len(self._levels):
                self._levels.append(bytearray())

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
        at = index * HASH_SIZE
        return bytes(self._levels[level][at : at + HASH_SIZE])

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
