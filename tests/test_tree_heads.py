"""The control log's Merkle tree and its signed checkpoints (SPEC.md 8.1): the head the journal
keeps is the tree of the log's records, across restarts; `gateway proof` gives inclusion and
consistency proofs that the independent verifier accepts; a forged history (one message's
records removed, the chain recomputed, signed with the same key) fails consistency."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.events import Envelope, now
from gateway.log import RecordKind, SegmentLog, iter_log
from gateway.merkle import MerkleTree, leaf_hash, record_leaf
from gateway.services.archive import Archive, StoreConfig
from gateway.services.tree_heads import CheckpointSigner, control_origin

from .conftest import FAST_KDF
from .test_workers import serve

ROOT = Path(__file__).resolve().parent.parent
VERIFIER = ROOT / "tools" / "audit_verify.py"
CONFIG = StoreConfig(kdf=FAST_KDF)
CONTROL = bytes(16)


def run(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    argv_text = [sys.executable, *map(str, argv)]
    return subprocess.run(
        argv_text, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


async def store(archive: Archive, mailbox_id: str, count: int) -> list[str]:
    ids = []
    for n in range(count):
        writer = archive.begin_message([mailbox_id])
        await writer.write(b"Subject: %d\r\n\r\nbody\r\n" % n)
        ids.append((await writer.commit(Envelope(received_at=now(), origin="journal")))[mailbox_id])
    return ids


def log_tree(data: Path) -> MerkleTree:
    tree = MerkleTree()
    for record in iter_log(data / "control", CONTROL, tail_ok=True):
        tree.append(leaf_hash(record_leaf(record.seq, record.kind, record.body)))
    return tree


async def sign(data: Path, box: str | None, count: int) -> tuple[str, list[str]]:
    """Open the folder, store ``count`` messages (in a new mailbox when ``box`` is None), sign a
    checkpoint, close; the mailbox and the ids."""
    archive = await Archive.open(data, CONFIG)
    try:
        if box is None:
            box = (await archive.create_mailbox("custody"))[0].mailbox_id
        ids = await store(archive, box, count)
        signer = await CheckpointSigner.open(archive, control_origin("gateway.example"))
        assert await signer.sign() is not None
        assert await signer.sign() is None  # nothing moved: nothing signed
        size, root = await archive.tree_head()
        assert root == log_tree(data).root(size)  # the kept head is the log's tree
    finally:
        await archive.aclose()
    return box, ids


async def test_proofs_verify_independently_and_a_forged_history_does_not(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    box, ids = await sign(data, None, 5)
    first = (data / "custody" / "checkpoint").read_bytes()
    await sign(data, box, 4)  # reopened from its recovery point
    second = (data / "custody" / "checkpoint").read_bytes()
    old, new = (int(n.split(b"\n")[1]) for n in (first, second))
    assert sorted(int(p.name) for p in (data / "custody" / "checkpoints").iterdir()) == [old, new]

    proof = run("-m", "gateway", "proof", ids[2], "--data-dir", data)
    assert proof.returncode == 0, proof.stderr
    item = json.loads(proof.stdout)
    (tmp_path / "checkpoint").write_text(item["checkpoint"])
    (tmp_path / "proof.jsonl").write_text(proof.stdout)
    args = (
        "--vkey",
        item["vkey"],
        "--checkpoint",
        tmp_path / "checkpoint",
        tmp_path / "proof.jsonl",
    )
    assert run(VERIFIER, "inclusion", *args).returncode == 0
    item["hashes"][0] = item["hashes"][1]
    (tmp_path / "proof.jsonl").write_text(json.dumps(item) + "\n")
    assert run(VERIFIER, "inclusion", *args).returncode == 1

    (tmp_path / "old").write_bytes(first)
    (tmp_path / "new").write_bytes(second)
    consistency = run(
        "-m", "gateway", "proof", "--consistency", str(old), str(new), "--data-dir", data
    )
    assert consistency.returncode == 0, consistency.stderr
    (tmp_path / "consistency.json").write_text(consistency.stdout)
    check = ("--vkey", item["vkey"], "--old", tmp_path / "old", "--new", tmp_path / "new")
    assert run(VERIFIER, "consistency", *check, tmp_path / "consistency.json").returncode == 0

    # A forger with the key: the control log rewritten without the witness of one message
    # (its chain recomputed from there on), the tree rebuilt, a checkpoint signed.
    forged = tmp_path / "forged"
    shutil.copytree(data, forged)
    records = [r for r in iter_log(data / "control", CONTROL, tail_ok=True)]
    witness = next(
        r.seq for r in records if r.kind == RecordKind.EVENT and ids[1].encode() in r.body
    )
    shutil.rmtree(forged / "control")
    log = SegmentLog.create(forged / "control", CONTROL, segment_bytes=CONFIG.segment_bytes)
    log.append([(RecordKind(r.kind), r.body) for r in records if r.seq != witness], sync=True)
    log.close()
    tree = log_tree(forged)
    archive = await Archive.open(forged, CONFIG)  # reads the forged log whole
    try:
        signer = await CheckpointSigner.open(archive, control_origin("gateway.example"))
        signer.signed_size = 0
        await signer.sign()
    finally:
        await archive.aclose(checkpoint=False)
    forged_note = (forged / "custody" / "checkpoint").read_bytes()
    forged_size = int(forged_note.split(b"\n")[1])
    assert forged_size >= len(tree) - 1
    (tmp_path / "new").write_bytes(forged_note)
    consistency = run(
        "-m", "gateway", "proof", "--consistency", str(old), str(forged_size), "--data-dir", forged
    )
    assert consistency.returncode == 0, consistency.stderr
    (tmp_path / "consistency.json").write_text(consistency.stdout)
    refused = run(VERIFIER, "consistency", *check, tmp_path / "consistency.json")
    assert refused.returncode == 1 and "rewritten or forked" in refused.stderr


@pytest.mark.slow
def test_a_gateway_signs_at_its_stop(tmp_path: Path) -> None:
    with serve(tmp_path, workers=1) as served:
        line = served.wait_for_line(r"event=checkpoint-key vkey=")
    vkey = re.search(r"vkey=(\S+)", line)
    assert vkey is not None
    checkpoint = tmp_path / "data" / "custody" / "checkpoint"
    done = run(VERIFIER, "checkpoint", "--vkey", vkey.group(1), checkpoint)
    assert done.returncode == 0 and "/gateway/control size " in done.stdout, done.stderr
    assert os.stat(tmp_path / "data" / "custody" / "signing-key").st_mode & 0o777 == 0o600
