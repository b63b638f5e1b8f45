"""Write the golden data folder of recovery points under tests/golden/recovery-v1 (run once
per recovery-point format version; SPEC.md 6.7).

Like tools/make_golden.py: the folder is committed, ``tests/test_golden.py`` opens it with
every later version and expects the recovery points to be used as they are, so a change of
their format (or of the index or control state they carry) breaks a test and becomes a
conscious decision. Do not regenerate recovery-v1.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import trio

from gateway.crypto import KdfParams
from gateway.events import Envelope, now
from gateway.services.archive import Archive, StoreConfig

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "recovery-v1"


def body(n: int) -> bytes:
    return b"Subject: golden %d\r\n\r\n" % n + b"line %d\r\n" % n * (50 + 40 * n)


async def main() -> None:
    if OUT.exists():
        sys.exit(f"{OUT} exists; the golden folder of a format version is never rewritten")
    config = StoreConfig(
        kdf=KdfParams(memory_kib=64, iterations=1, lanes=1), segment_bytes=16 * 1024
    )
    archive = await Archive.open(OUT, config)
    info, password = await archive.create_mailbox("golden", "recovery points, version 1")
    box = info.mailbox_id
    ids = []
    for n in range(12):
        writer = archive.begin_message([box])
        await writer.write(body(n))
        ids.append((await writer.commit(Envelope(received_at=now(), origin="journal")))[box])
    await archive.expunge(box, ids[:2])
    # One message begun and never committed: its chunks wait in the recovery point.
    writer = archive.begin_message([box])
    await writer.write(random.Random(99).randbytes(300_000))  # a chunk (256 KiB) written
    await archive.checkpoint(everything=True)
    await writer.abort()
    await archive.aclose(checkpoint=False)
    (OUT / "gateway.lock").unlink()
    manifest = {"mailbox_id": box, "password": password, "message_ids": ids[2:]}
    (OUT.parent / "recovery-v1.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    trio.run(main)
