"""Chain-of-custody benchmark (issue 17): what the Merkle trees and signed checkpoints cost on
a filled data folder, and how fast a proof is answered.

Theory of operation
-------------------
The data folder is one ``store_bench.py`` filled (``--data``, e.g.
``/var/tmp/store_bench-10000000x1024/data``: 10,000,000 messages in 1,000 mailboxes, one of
them holding 1,000,000), or, without ``--data``, one this script fills in
``/var/tmp/custody_bench-N`` with ``--messages`` N small messages in one mailbox (kept between
runs). It is opened in this process with the public archive API, as the journal opens it:

1. **Open**, every mailbox log included (``Archive.all_opened``). On a folder written before
   the tree files existed this builds them from the records (the first start after the
   upgrade); afterwards it only checks they reach their logs' ends.
2. **Sign**: every tree head (each mailbox log's, then the control log's), timed; then again
   with nothing moved.
3. **Inclusion proofs on the biggest mailbox**: for ``--proofs`` random messages, what the
   admin API's ``proof.inclusion`` does: find the mailbox serving it (``Archive.serving``),
   read its commit record, read the proof from the tree file against the mailbox's latest
   checkpoint (``tree_heads.inclusion_proof``); each verified (RFC 9162 2.1.3.2) outside the
   timing. Median, p99 and the largest, with the log's record count.
4. **Consistency proof** of the control log between its first and its latest checkpoint.
5. The tree files' bytes per record, over every log.
6. Offline, after the archive is closed: ``gateway proof MESSAGE_ID --data-dir`` as a process
   (it finds the commit record through the message's witness, reading the control log up to
   it), wall time.

Run ``python tools/bench/custody_bench.py --help``; tools/bench/README.md has the results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.crypto import KdfParams  # noqa: E402
from gateway.events import Envelope, now  # noqa: E402
from gateway.log import TREE_FILE  # noqa: E402
from gateway.merkle import leaf_hash, leaves_in, verify_inclusion  # noqa: E402
from gateway.services.archive import Archive, StoreConfig  # noqa: E402
from gateway.services.tree_heads import (  # noqa: E402
    CheckpointSigner,
    consistency_proof,
    control_origin,
    inclusion_proof,
)
from gateway.tlog import Checkpoint, Verifier, open_note  # noqa: E402

# The smallest legal Argon2id cost: only mailbox creation and unlock use it (as in the tests).
CONFIG = StoreConfig(kdf=KdfParams(memory_kib=8, iterations=1, lanes=1))


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def fill(data: Path, messages: int) -> None:
    archive = await Archive.open(data, CONFIG)
    try:
        boxes = archive.mailboxes()
        box = (
            boxes[0].mailbox_id if boxes else (await archive.create_mailbox("bench"))[0].mailbox_id
        )
        await archive.all_opened()
        todo = messages - len(archive.messages(box))
        log(f"filling {todo} messages")
        body = b"Subject: custody bench\r\n\r\n" + b"x" * 900 + b"\r\n"

        async def writer(count: int) -> None:
            for _ in range(count):
                message = archive.begin_message([box])
                await message.write(body)
                await message.commit(Envelope(received_at=now(), origin="journal"))

        async with trio.open_nursery() as nursery:
            for task in range(64):
                nursery.start_soon(writer, todo // 64 + (task < todo % 64))
    finally:
        await archive.aclose()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def measure(data: Path, proofs: int) -> tuple[dict[str, object], str]:
    results: dict[str, object] = {}
    started = time.perf_counter()
    archive = await Archive.open(data, CONFIG)
    try:
        results["open_serving_s"] = round(time.perf_counter() - started, 3)
        await archive.all_opened()
        results["open_every_log_s"] = round(time.perf_counter() - started, 3)
        log(f"open: {results['open_every_log_s']} s")
        signer = await CheckpointSigner.open(archive, control_origin("bench.example"))
        started = time.perf_counter()
        await signer.sign()
        results["sign_every_tree_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        await signer.sign()
        results["sign_nothing_moved_s"] = round(time.perf_counter() - started, 3)
        log(f"sign: {results['sign_every_tree_s']} s, again {results['sign_nothing_moved_s']} s")

        biggest = max(
            archive.mailboxes(), key=lambda info: archive.backlog(info.mailbox_id).messages
        )
        box = biggest.mailbox_id
        messages = archive.messages(box)
        results["proof_mailbox_messages"] = len(messages)
        verifier = Verifier.parse(signer.signer.vkey())
        times: list[float] = []
        sample = random.Random(17).sample(messages, min(proofs, len(messages)))
        for message in sample:
            started = time.perf_counter()
            (serving, *_rest) = archive.serving(message.message_id)
            seq, body = await archive.commit_record(serving, message.message_id)
            proof = await trio.to_thread.run_sync(
                inclusion_proof, archive.data, verifier, serving, seq, body
            )
            times.append(time.perf_counter() - started)
            checkpoint = Checkpoint.parse(open_note(proof.note, verifier))
            assert verify_inclusion(
                leaf_hash(proof.leaf), proof.index, proof.size, proof.hashes, checkpoint.root
            ), "a proof did not verify"
        results["proof_log_records"] = proof.size
        results["proof_ms_median"] = round(statistics.median(times) * 1000, 3)
        results["proof_ms_p99"] = round(percentile(times, 0.99) * 1000, 3)
        results["proof_ms_max"] = round(max(times) * 1000, 3)
        log(f"inclusion proofs: median {results['proof_ms_median']} ms on {proof.size} records")

        sizes = archive.data.checkpoint_sizes()
        if len(sizes) >= 2:
            started = time.perf_counter()
            await trio.to_thread.run_sync(
                consistency_proof, archive.data, sizes[0], sizes[-1], sizes[-1]
            )
            results["consistency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        example = sample[0].message_id
    finally:
        await archive.aclose()
    return results, example


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a filled data folder (else one of our own)")
    parser.add_argument("--messages", type=int, default=500_000, help="to fill, without --data")
    parser.add_argument("--proofs", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = args.data or Path(f"/var/tmp/custody_bench-{args.messages}/data")
    if args.data is None:
        trio.run(fill, data, args.messages)
    results, example = trio.run(measure, data, args.proofs)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "proof", example, "--data-dir", str(data)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    tree_bytes, records = 0, 0
    for path in data.rglob(TREE_FILE):
        size = path.stat().st_size
        tree_bytes, records = tree_bytes + size, records + leaves_in(size // 32)
    results["tree_bytes_per_record"] = round(tree_bytes / max(records, 1), 1)
    results["records_in_every_tree"] = records
    results["offline_proof_process_s"] = round(time.perf_counter() - started, 3)
    results["offline_proof_exit"] = done.returncode
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
