"""Write the golden data folder under tests/golden/v1 (run once per on-disk format version).

The golden folder is committed: ``tests/test_golden.py`` opens it with every later version,
so a change of the on-disk format breaks a test and becomes a conscious decision (a new
version folder plus reading code for the old one). Do not regenerate v1.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import trio

from gateway.crypto import KdfParams
from gateway.events import Envelope, MailboxStatus, now
from gateway.services.archive import Archive, StoreConfig

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden" / "v1"
MESSAGES = [
    b"",
    b"Subject: hello\r\n\r\nplain\r\n",
    b"Subject: 8bit \xc3\xa9\xff\x00\r\n\r\n.\r\n..dots\r\n",
    bytes(range(256)) * 2000,  # 512,000 bytes: three chunks
]


def filler_body(n: int) -> bytes:
    """Incompressible, so that segments fill: 25,000 bytes from a seeded generator."""
    return random.Random(n).randbytes(25_000)


async def main() -> None:
    if OUT.exists():
        sys.exit(f"{OUT} exists; the golden folder of a format version is never rewritten")
    config = StoreConfig(
        kdf=KdfParams(memory_kib=64, iterations=1, lanes=1), segment_bytes=64 * 1024
    )
    archive = await Archive.open(OUT, config)
    info, password = await archive.create_mailbox("golden", "format version 1")
    other, other_password = await archive.create_mailbox("other")
    box = info.mailbox_id
    ids = []
    for body in MESSAGES:
        writer = archive.begin_message([box])
        await writer.write(body)
        ids.append(
            (await writer.commit(Envelope(received_at=now(), origin="journal", mail_from="a@b")))[
                box
            ]
        )
    filler = []
    for n in range(8):
        writer = archive.begin_message([box])
        await writer.write(filler_body(n))
        filler.append((await writer.commit(Envelope(received_at=now(), origin="journal")))[box])
    # Two per segment: expunging 0-2 removes one segment whole and rewrites the next.
    await archive.expunge(box, filler[:3])
    await archive.compact(box, min_gain=0.3)
    password = await archive.change_password(box, password)
    await archive.update_mailbox(other.mailbox_id, status=MailboxStatus.SUSPENDED)
    await archive.aclose()
    (OUT / "gateway.lock").unlink()
    manifest = {
        "mailbox_id": box,
        "password": password,
        "message_ids": ids,
        "filler_ids": filler,
        "expunged_filler": 3,
        "other_mailbox_id": other.mailbox_id,
        "other_password": other_password,
    }
    (OUT.parent / "v1.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(OUT / "tmp", ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
