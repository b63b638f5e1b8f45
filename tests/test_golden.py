"""The golden data folder: written once by format version 1 (tools/make_golden.py) and
committed. Every later version must open it, verify it and read every message back. If this
test breaks, the on-disk format changed: that is a decision, not a fix (SPEC.md 4.4)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
from pathlib import Path

import pytest
import trio

from gateway.services.archive import Archive, StoreConfig
from gateway.verify import verify_data_dir

GOLDEN = Path(__file__).parent / "golden"
# The bodies the golden folder was written with (kept here, not imported from the tool, so
# that the expectation cannot drift with it).
MESSAGES = [
    b"",
    b"Subject: hello\r\n\r\nplain\r\n",
    b"Subject: 8bit \xc3\xa9\xff\x00\r\n\r\n.\r\n..dots\r\n",
    bytes(range(256)) * 2000,
]


def filler_body(n: int) -> bytes:
    return random.Random(n).randbytes(25_000)


def test_golden_v1_verifies_and_reads_back(tmp_path: Path) -> None:
    manifest = json.loads((GOLDEN / "v1.json").read_text())
    data = tmp_path / "v1"
    shutil.copytree(GOLDEN / "v1", data)
    box = manifest["mailbox_id"]

    report = verify_data_dir(data, mailbox_id=box, password=manifest["password"])
    assert report.ok, [str(p) for p in report.problems]
    kept = len(MESSAGES) + len(manifest["filler_ids"]) - manifest["expunged_filler"]
    assert report.opened_messages == kept

    async def read_all() -> None:
        archive = await Archive.open(data, StoreConfig())
        try:
            expected = dict(zip(manifest["message_ids"], MESSAGES, strict=True))
            for n, message_id in enumerate(manifest["filler_ids"]):
                if n >= manifest["expunged_filler"]:
                    expected[message_id] = filler_body(n)
            listed = [m.message_id for m in archive.messages(box)]
            assert listed == list(expected)
            key = await archive.unlock(box, manifest["password"])
            for message_id, body in expected.items():
                pieces = [p async for p in archive.read_message(box, message_id, key)]
                assert b"".join(pieces) == body
            other = archive.mailbox(manifest["other_mailbox_id"])
            assert other.status == "suspended"
            assert other.name == "other"
        finally:
            await archive.aclose()

    trio.run(read_all)
    # Opening it anchored its logs (they predate commit witnesses): from now on they are
    # held to that anchor, and verify still accounts for every message.
    assert any("predates commit witnesses" in note for note in report.notes)
    anchored = verify_data_dir(data, mailbox_id=box, password=manifest["password"])
    assert anchored.ok, [str(p) for p in anchored.problems]
    assert anchored.opened_messages == kept
    assert not any("predates commit witnesses" in note for note in anchored.notes)


def test_golden_v1_bytes_are_unchanged() -> None:
    """The committed files themselves: a tool that rewrote them would hide a format change."""
    control = (GOLDEN / "v1" / "control" / "00000000000000000000.seg").read_bytes()
    assert control[:8] == b"MAGSEG1\n"
    assert control[8:12] == b"\x01\x00\x00\x00"
    assert control[12:28] == bytes(16)
    for key in (GOLDEN / "v1" / "mailboxes").glob("*/key"):
        assert key.read_bytes()[:8] == b"MAGKEY1\n"


def recovery_body(n: int) -> bytes:
    """The bodies tools/make_golden_recovery.py wrote (kept here, like MESSAGES)."""
    return b"Subject: golden %d\r\n\r\n" % n + b"line %d\r\n" % n * (50 + 40 * n)


def test_golden_recovery_points_are_used_as_they_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Recovery points of format version 1 (SPEC.md 6.7), made by
    tools/make_golden_recovery.py: opened from them, nothing set aside, every message read
    back, and the chunks of the message that was being written listed as waiting."""
    manifest = json.loads((GOLDEN / "recovery-v1.json").read_text())
    data = tmp_path / "recovery-v1"
    shutil.copytree(GOLDEN / "recovery-v1", data)
    box = manifest["mailbox_id"]

    async def read_all() -> None:
        archive = await Archive.open(data, StoreConfig())
        try:
            assert [m.message_id for m in archive.messages(box)] == manifest["message_ids"]
            assert len(archive.pending_chunks(box)) == 1
            key = await archive.unlock(box, manifest["password"])
            for n, message_id in enumerate(manifest["message_ids"], 2):
                pieces = [p async for p in archive.read_message(box, message_id, key)]
                assert b"".join(pieces) == recovery_body(n)
        finally:
            await archive.aclose(checkpoint=False)

    trio.run(read_all)
    # Both are used; the logs' tree files, which the folder predates, are built from the
    # records beside them (SPEC.md 8.1).
    unused = [r.getMessage() for r in caplog.records if "recovery-point-unused" in r.getMessage()]
    assert unused == []
    assert all(
        (data / d / "merkle-tree").stat().st_size for d in ("control", f"mailboxes/{box}/log")
    )
    report = verify_data_dir(data, mailbox_id=box, password=manifest["password"])
    assert report.ok, [str(p) for p in report.problems]
    assert report.opened_messages == len(manifest["message_ids"])


def test_golden_recovery_point_bytes_are_unchanged() -> None:
    folder = GOLDEN / "recovery-v1"
    box = json.loads((GOLDEN / "recovery-v1.json").read_text())["mailbox_id"]
    for log_id, raw in (
        (bytes(16), (folder / "control" / "recovery").read_bytes()),
        (bytes.fromhex(box), (folder / "mailboxes" / box / "log" / "recovery").read_bytes()),
    ):
        assert raw[:8] == b"MAGRCP1\n"
        assert raw[8:12] == b"\x01\x00\x00\x00"
        assert raw[12:28] == log_id
        segments, state = struct.unpack_from("<IQ", raw, 88)
        assert len(raw) == 100 + 12 * segments + state + 32
        assert hashlib.sha256(raw[:-32]).digest() == raw[-32:]
