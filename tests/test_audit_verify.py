"""Signed checkpoints (``gateway.tlog``) and the auditor's independent verifier
(``tools/audit_verify.py``, which imports nothing of the gateway): inclusion proofs of every
leaf of a 10,000-leaf log verify; a proof with one hash changed, a checkpoint with another
size or root, a signature by another key, and a forged (rewritten) history do not."""

from __future__ import annotations

import ast
import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.merkle import MerkleTree, leaf_hash
from gateway.tlog import Checkpoint, NoteError, NoteSigner, Verifier, open_note

ROOT = Path(__file__).resolve().parent.parent
VERIFIER = ROOT / "tools" / "audit_verify.py"
ORIGIN = "gateway.example/control"
LEAVES = [b"commit record %d" % n for n in range(10_000)]


def audit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(VERIFIER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def tree() -> MerkleTree:
    tree = MerkleTree()
    for leaf in LEAVES:
        tree.append(leaf_hash(leaf))
    return tree


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, Ed25519PrivateKey.generate())


def signed(signer: NoteSigner, tree: MerkleTree, size: int) -> bytes:
    return signer.sign(Checkpoint(ORIGIN, size, tree.root(size)).body())


def proof_line(tree: MerkleTree, index: int, size: int) -> str:
    hashes = [base64.b64encode(h).decode() for h in tree.inclusion_proof(index, size)]
    return json.dumps({"index": index, "leaf_hash": tree.leaf(index).hex(), "hashes": hashes})


def test_the_verifier_imports_nothing_of_the_gateway() -> None:
    tree = ast.parse(VERIFIER.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert "gateway" not in imported
    assert imported <= set(sys.stdlib_module_names) | {"cryptography", "__future__"}


def test_inclusion_of_every_leaf_verifies_independently(
    tmp_path: Path, tree: MerkleTree, signer: NoteSigner
) -> None:
    checkpoint = tmp_path / "checkpoint"
    checkpoint.write_bytes(signed(signer, tree, len(tree)))
    proofs = tmp_path / "proofs.jsonl"
    proofs.write_text("".join(proof_line(tree, i, len(tree)) + "\n" for i in range(len(tree))))
    done = audit("inclusion", "--vkey", signer.vkey(), "--checkpoint", checkpoint, proofs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OK 10000 inclusion proof(s)"
    # By the leaf's bytes rather than its hash, too.
    one = tmp_path / "one.jsonl"
    item = json.loads(proof_line(tree, 4321, len(tree)))
    del item["leaf_hash"]
    item["leaf"] = base64.b64encode(LEAVES[4321]).decode()
    one.write_text(json.dumps(item) + "\n")
    assert (
        audit("inclusion", "--vkey", signer.vkey(), "--checkpoint", checkpoint, one).returncode == 0
    )


def test_a_changed_hash_size_root_or_key_fails(
    tmp_path: Path, tree: MerkleTree, signer: NoteSigner
) -> None:
    note = signed(signer, tree, len(tree))
    checkpoint = tmp_path / "checkpoint"
    checkpoint.write_bytes(note)
    item = json.loads(proof_line(tree, 777, len(tree)))
    item["hashes"][3] = base64.b64encode(bytes(32)).decode()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(item) + "\n")
    done = audit("inclusion", "--vkey", signer.vkey(), "--checkpoint", checkpoint, bad)
    assert done.returncode == 1 and "is not in" in done.stderr

    good = tmp_path / "good.jsonl"
    good.write_text(proof_line(tree, 777, len(tree)) + "\n")
    other_root = base64.b64encode(tree.root(9_999)).decode().encode()
    for forged in (
        note.replace(b"\n10000\n", b"\n9999\n", 1),  # another size
        note.replace(base64.b64encode(tree.root()), other_root, 1),  # another root
    ):
        checkpoint.write_bytes(forged)
        done = audit("inclusion", "--vkey", signer.vkey(), "--checkpoint", checkpoint, good)
        assert done.returncode == 1 and "does not verify" in done.stderr, done.stderr

    stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    checkpoint.write_bytes(signed(stranger, tree, len(tree)))
    done = audit("inclusion", "--vkey", signer.vkey(), "--checkpoint", checkpoint, good)
    assert done.returncode == 1 and "no signature by" in done.stderr
    assert audit("checkpoint", "--vkey", "not+a+key", checkpoint).returncode == 1
    assert audit("inclusion", "--vkey").returncode == 2


def test_a_forged_history_is_caught_by_consistency(
    tmp_path: Path, tree: MerkleTree, signer: NoteSigner
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(signed(signer, tree, 5_000))
    new.write_bytes(signed(signer, tree, len(tree)))
    proof = tmp_path / "proof.json"
    hashes = [base64.b64encode(h).decode() for h in tree.consistency_proof(5_000, len(tree))]
    proof.write_text(json.dumps({"hashes": hashes}))
    done = audit("consistency", "--vkey", signer.vkey(), "--old", old, "--new", new, proof)
    assert done.returncode == 0 and "extends size 5000" in done.stdout, done.stderr

    # One record removed and everything after it appended again, signed by the same key.
    forged = MerkleTree()
    for n, leaf in enumerate(LEAVES):
        if n != 1234:
            forged.append(leaf_hash(leaf))
    new.write_bytes(signer.sign(Checkpoint(ORIGIN, len(forged), forged.root()).body()))
    hashes = [base64.b64encode(h).decode() for h in forged.consistency_proof(5_000, len(forged))]
    proof.write_text(json.dumps({"hashes": hashes}))
    done = audit("consistency", "--vkey", signer.vkey(), "--old", old, "--new", new, proof)
    assert done.returncode == 1 and "rewritten or forked" in done.stderr
    # And cut back: a newer checkpoint that is smaller.
    new.write_bytes(signed(signer, tree, 4_000))
    done = audit("consistency", "--vkey", signer.vkey(), "--old", old, "--new", new, proof)
    assert done.returncode == 1 and "cut back" in done.stderr


def test_signed_notes_round_trip_and_refuse_what_is_not_theirs(signer: NoteSigner) -> None:
    checkpoint = Checkpoint(ORIGIN, 3, bytes(range(32)), ("extension line",))
    note = signer.sign(checkpoint.body())
    verifier = Verifier.parse(signer.vkey())
    assert Checkpoint.parse(open_note(note, verifier)) == checkpoint
    with pytest.raises(NoteError, match="does not verify"):
        open_note(note.replace(b"\n3\n", b"\n4\n"), verifier)
    with pytest.raises(NoteError, match="no signature by"):
        open_note(note, Verifier.parse(NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).vkey()))
    name, _key_id, key = signer.vkey().split("+", 2)
    with pytest.raises(NoteError, match="not its key"):
        Verifier.parse(f"{name}+00000000+{key}")
    for body in (b"origin\n12\n", b"origin\n012\n" + base64.b64encode(bytes(32)) + b"\n"):
        with pytest.raises(NoteError):
            Checkpoint.parse(body)
