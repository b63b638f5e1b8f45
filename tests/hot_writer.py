"""A gateway-like process for the hot-backup test: it stores messages with several concurrent
writers, expunges and compacts now and then, and prints one line per acknowledged change:

    stored <mailbox> <message id>     the commit returned: the message is durable
    expunging <mailbox> <message id>  about to expunge: the message may be gone from now on
    expunged <mailbox> <message id>   the expunge returned: the message is gone for good

Run as ``python -m tests.hot_writer DATA_DIR SECONDS``; it creates two mailboxes first and
prints ``mailbox <id> <password>`` for each.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import trio

from gateway.crypto import KdfParams
from gateway.events import Envelope, now
from gateway.services.archive import Archive, StoreConfig

FAST = KdfParams(memory_kib=64, iterations=1, lanes=1)
SEGMENT = 128 * 1024


async def main(data_dir: Path, seconds: float) -> None:
    archive = await Archive.open(data_dir, StoreConfig(kdf=FAST, segment_bytes=SEGMENT))
    boxes = []
    for name in ("a", "b"):
        info, password = await archive.create_mailbox(name)
        boxes.append(info.mailbox_id)
        print("mailbox", info.mailbox_id, password, flush=True)

    async def writer(n: int) -> None:
        rng = random.Random(n)
        while True:
            box = rng.choice(boxes)
            message = archive.begin_message([box])
            size = rng.choice([100, 5000, 70_000, 300_000])
            for start in range(0, size, 16384):
                await message.write(rng.randbytes(min(16384, size - start)))
            ids = await message.commit(Envelope(received_at=now(), origin="journal"))
            print("stored", box, ids[box], flush=True)

    async def janitor() -> None:
        rng = random.Random(99)
        while True:
            await trio.sleep(0.05)
            box = rng.choice(boxes)
            messages = archive.messages(box)
            if len(messages) > 20:
                victims = [m.message_id for m in messages[: len(messages) // 2]]
                for victim in victims:
                    print("expunging", box, victim, flush=True)
                await archive.expunge(box, victims)
                for victim in victims:
                    print("expunged", box, victim, flush=True)
                await archive.compact(box, min_gain=0.3)

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(writer, n)
            nursery.start_soon(janitor)
    await archive.aclose()


async def messages_present(data_dir: Path) -> set[tuple[str, str]]:
    """(mailbox id, message id) of every message a data folder serves; asserts that no
    mailbox opened damaged. For the tests that check this writer's folders."""
    archive = await Archive.open(data_dir, StoreConfig(kdf=FAST, segment_bytes=SEGMENT))
    try:
        for box in archive.mailboxes():
            assert archive.damaged(box.mailbox_id) is None, archive.damaged(box.mailbox_id)
        return {
            (box.mailbox_id, m.message_id)
            for box in archive.mailboxes()
            for m in archive.messages(box.mailbox_id)
        }
    finally:
        await archive.aclose()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), float(sys.argv[2]))
