"""``gateway store migrate`` (SPEC.md 17.4) on a real PostgreSQL: a data folder of 10,000
messages, compacted and with signed checkpoints, copied into the fleet store (the copy killed
halfway and resumed) and back into a new folder that verifies and holds the same files byte
for byte; what does not verify is not copied; a folder in use is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gateway.events import Envelope, now
from gateway.services.archive import Archive, StoreConfig
from gateway.services.tree_heads import CheckpointSigner, control_origin

from .conftest import FAST_KDF
from .peers import PostgresServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
CONFIG = StoreConfig(kdf=FAST_KDF, segment_bytes=256 * 1024, compaction_grace=0.0)


async def build(data: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """Two mailboxes, 10,000 messages, a fifth of one mailbox expunged and compacted away,
    checkpoints signed. Per mailbox: its password and the bodies it serves."""
    archive = await Archive.open(data, CONFIG)
    kept: dict[str, tuple[str, dict[str, bytes]]] = {}
    try:
        for name, count in (("big", 8000), ("small", 2000)):
            info, password = await archive.create_mailbox(name)
            bodies: dict[str, bytes] = {}

            async def one(
                n: int, box: str = info.mailbox_id, into: dict[str, bytes] = bodies
            ) -> None:
                body = b"Subject: %d\r\n\r\n" % n + os.urandom(200)
                writer = archive.begin_message([box])
                await writer.write(body)
                into[(await writer.commit(Envelope(received_at=now(), origin="journal")))[box]] = (
                    body
                )

            for start in range(0, count, 500):
                async with trio.open_nursery() as nursery:
                    for n in range(start, start + 500):
                        nursery.start_soon(one, n)
            kept[info.mailbox_id] = (password, bodies)
        big = next(iter(kept))
        gone = sorted(kept[big][1])[:1600]
        await archive.expunge(big, gone)
        for message_id in gone:
            del kept[big][1][message_id]
        assert await archive.compact(big, min_gain=0.01) > 0
        await archive.remove_retired(big)
        signer = await CheckpointSigner.open(archive, control_origin("gateway.example"))
        await signer.sign()
    finally:
        await archive.aclose()
    return kept


def migrate(postgres: PostgresServer, data: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "store", "migrate", "--data-dir", str(data), *extra],
        cwd=ROOT,
        env={**os.environ, "GATEWAY_STORE_DSN": postgres.dsn},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def scratch_left(folder: Path) -> list[str]:
    return [p.name for p in folder.glob("gateway-verify-*")]


def files(root: Path) -> dict[str, bytes]:
    """Every file a copy of the store holds, by path (the chosen segment generations only:
    ``remove_retired`` left no other)."""
    skip = {"gateway.lock", "recovery"}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip and "tls" not in p.parts
    }


async def test_a_store_of_10000_messages_round_trips_verified(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    kept = await build(source)

    # Cut short: killed once it has copied some records, then resumed.
    first = migrate(postgres, source)
    assert first.stderr is not None
    killed = False
    for line in first.stderr:
        if line.split(": ")[-1].strip().isdigit() and int(line.split(": ")[-1]) >= 3000:
            first.send_signal(signal.SIGKILL)
            killed = True
            break
    first.communicate(timeout=60)  # reaped, its pipes closed
    assert killed and first.returncode == -signal.SIGKILL
    held = int(postgres.psql("SELECT count(*) FROM gateway_records"))
    resumed = migrate(postgres, source)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert out.splitlines()[-1] == "OK"
    assert postgres.psql("SELECT count(*) FROM gateway_logs") == "3"
    # Every log's tree came with it, its head at the log's end: appends extend it.
    assert postgres.psql("SELECT count(*) FROM gateway_logs WHERE tree_size = next_seq") == "3"
    records = int(postgres.psql("SELECT count(*) FROM gateway_records"))
    assert records > 10_000 and held >= 3000
    # The second run copied only what the first had not (records, then files).
    assert f"records {records - held} " in out.splitlines()[0], out

    back = migrate(postgres, copy, "--out")
    out, err = back.communicate(timeout=300)
    assert back.returncode == 0, err
    assert out.splitlines()[-1] == "OK"
    expected = files(source)
    assert files(copy) == expected  # every segment, tree, key and checkpoint, byte for byte

    # gateway verify on the database itself, then on rows altered behind its back.
    def verify_store() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "verify",
                "--dsn",
                postgres.dsn,
                "--scratch",
                tmp_path,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    checked = await trio.to_thread.run_sync(verify_store)
    assert checked.returncode == 0 and checked.stdout.splitlines()[-1] == "OK", checked.stderr
    where = f"log_id = decode('{next(iter(kept))}', 'hex')"
    postgres.psql(
        f"UPDATE gateway_records SET body = overlay(body placing '\\x00' from 5 for 1) "
        f"WHERE {where} AND seq = (SELECT max(seq) FROM gateway_records WHERE {where})"
    )
    checked = await trio.to_thread.run_sync(verify_store)
    assert checked.returncode == 1 and "chain value differs" in checked.stdout, checked
    assert scratch_left(tmp_path) == []  # the copy is gone

    archive = await Archive.open(copy, CONFIG)  # and it serves every message
    try:
        for box, (password, bodies) in kept.items():
            key = await archive.unlock(box, password)
            assert {m.message_id for m in archive.messages(box)} == set(bodies)
            for message_id in list(bodies)[:50]:
                read = b"".join([p async for p in archive.read_message(box, message_id, key)])
                assert read == bodies[message_id]
    finally:
        await archive.aclose()


async def test_a_folder_that_does_not_verify_or_is_in_use_is_not_copied(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    archive = await Archive.open(data, CONFIG)
    try:
        await archive.create_mailbox("in use")
        busy = migrate(postgres, data)
        _out, err = busy.communicate(timeout=60)
        assert busy.returncode == 2 and "another gateway process" in err, err
    finally:
        await archive.aclose()
    segment = next((data / "control").glob("*.seg"))
    raw = bytearray(segment.read_bytes())
    raw[100] ^= 1
    segment.write_bytes(bytes(raw))
    bad = migrate(postgres, data)
    _out, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "does not verify" in err, err
    assert postgres.psql("SELECT to_regclass('gateway_records')") == ""  # nothing was written
