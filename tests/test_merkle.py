"""RFC 9162 Merkle trees (``gateway.merkle``) against the RFC's own recursive definitions,
for every tree of up to 70 leaves, every leaf and every pair of sizes; and tampered proofs
fail."""

from __future__ import annotations

import hashlib

import pytest

from gateway.merkle import (
    MerkleTree,
    frontier_append,
    frontier_of,
    frontier_root,
    leaf_hash,
    leaves_in,
    node_hash,
    record_leaf,
    record_leaf_hash,
    tree_nodes,
    verify_consistency,
    verify_inclusion,
)

SIZES = range(1, 71)


def mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1, as written."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 2.1.3.1, as written."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """RFC 9162 2.1.4.1, as written."""
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


LEAVES = [b"record %d" % n for n in range(max(SIZES) + 1)]


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    tree = MerkleTree()
    for leaf in LEAVES:
        tree.append(leaf_hash(leaf))
    return tree


def test_heads_match_the_definition(tree: MerkleTree) -> None:
    assert tree.root(0) == hashlib.sha256(b"").digest()
    for size in SIZES:
        assert tree.root(size) == mth(LEAVES[:size]), size


def test_every_inclusion_proof_matches_and_verifies(tree: MerkleTree) -> None:
    for size in SIZES:
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == path(index, LEAVES[:size])
            assert verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, root)
            # Another leaf, another index or another size: refused.
            assert not verify_inclusion(leaf_hash(b"forged"), index, size, proof, root)
            if size > 1:
                other = (index + 1) % size
                assert not verify_inclusion(leaf_hash(LEAVES[index]), other, size, proof, root)
            bigger = tree.root(size + 1)  # the head of another size: refused
            assert not verify_inclusion(leaf_hash(LEAVES[index]), index, size + 1, proof, bigger)


def test_every_consistency_proof_matches_and_verifies(tree: MerkleTree) -> None:
    for new in SIZES:
        for old in range(1, new + 1):
            proof = tree.consistency_proof(old, new)
            assert proof == subproof(old, LEAVES[:new], True)
            assert verify_consistency(old, new, tree.root(old), tree.root(new), proof)
            assert not verify_consistency(
                old, new, mth([b"x", *LEAVES[1:old]]), tree.root(new), proof
            )


def test_a_changed_hash_anywhere_in_a_proof_is_refused(tree: MerkleTree) -> None:
    size, index = 61, 37
    root = tree.root(size)
    proof = tree.inclusion_proof(index, size)
    for i in range(len(proof)):
        bad = [*proof]
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_inclusion(leaf_hash(LEAVES[index]), index, size, bad, root)
    assert not verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof[:-1], root)
    consistency = tree.consistency_proof(23, 61)
    for i in range(len(consistency)):
        bad = [*consistency]
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_consistency(23, 61, tree.root(23), root, bad)


def test_a_forked_history_is_not_consistent(tree: MerkleTree) -> None:
    """A log with one record removed and the rest appended again (a rewritten history)
    has no consistency proof from the old head."""
    forged = MerkleTree()
    for n, leaf in enumerate(LEAVES[:60]):
        if n != 20:
            forged.append(leaf_hash(leaf))
    old_root = tree.root(30)
    for old in (30,):
        proof = forged.consistency_proof(old, len(forged))
        assert not verify_consistency(old, len(forged), old_root, forged.root(), proof)


def test_bad_arguments() -> None:
    tree = MerkleTree()
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")
    tree.append(leaf_hash(b"a"))
    with pytest.raises(ValueError, match="not in a tree"):
        tree.inclusion_proof(1, 1)
    with pytest.raises(ValueError, match="no consistency proof"):
        tree.consistency_proof(0, 1)
    assert not verify_inclusion(leaf_hash(b"a"), 0, 0, [], tree.root())
    assert not verify_consistency(1, 1, tree.root(), tree.root(), [tree.root()])


def test_a_frontier_knows_every_head(tree: MerkleTree) -> None:
    frontier: list[bytes] = []
    for size, leaf in enumerate(LEAVES):
        assert frontier_root(frontier) == tree.root(size)
        assert len(frontier) == bin(size).count("1")
        frontier_append(frontier, size, leaf_hash(leaf))


def test_hashes_kept_in_post_order_serve_every_earlier_tree(tree: MerkleTree) -> None:
    """A tree's hashes are appended in post-order: the first ``tree_nodes(n)`` of them are
    the tree of ``n`` leaves, so a view of a longer run of them (a file that grew since)
    gives every earlier head, proof and frontier; a cut-short append is not a tree."""
    hashes = tree.hashes
    assert len(hashes) == tree_nodes(len(tree)) * 32
    for size in SIZES:
        view = MerkleTree.view(hashes, size)
        assert view.root() == mth(LEAVES[:size])
        assert view.inclusion_proof(size // 2) == path(size // 2, LEAVES[:size])
        assert frontier_of(hashes, size) == frontier_of(MerkleTree.view(hashes, size).hashes, size)
        assert frontier_root(frontier_of(hashes, size)) == view.root()
        assert leaves_in(tree_nodes(size)) == size
        assert leaves_in(tree_nodes(size + 1) - 1) == size  # an append cut short
    with pytest.raises(ValueError, match="no tree of"):
        MerkleTree.view(hashes[:32], 2)
    with pytest.raises(TypeError, match="read-only"):
        MerkleTree.view(hashes, 3).append(leaf_hash(b"x"))


def test_a_record_leaf_hash_is_the_hash_of_its_leaf() -> None:
    body = bytes(range(256)) * 5
    assert record_leaf_hash(7, 2, body) == leaf_hash(record_leaf(7, 2, body))
