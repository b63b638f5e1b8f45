"""Benchmark of durable message appends: the archive against the disk's own floor.

Theory of operation
-------------------
Every scenario runs in a fresh subprocess (this script re-invoked with the hidden
``--scenario`` argument), so the peak RSS it reports (``getrusage().ru_maxrss``) belongs to
that scenario alone, and the CPU seconds (user + sys of the whole process, worker threads
included) are taken over the measured window only.

Three kinds of scenario:

``gateway``
    One :class:`~gateway.services.archive.Archive`; W trio tasks, each looping
    ``begin_message`` / ``write`` (64 KiB pieces) / ``commit``, to one mailbox or to one
    mailbox per task. ``commit`` returns once the message is durable (fdatasync), so every
    completed message counts as one durable append.
``floor``
    The physical floor on the same folder: one file, one thread, ``os.write`` of as many
    bytes as the gateway wrote per message (framing and commit record included), and one
    ``os.fdatasync`` after every message or after every 32.
``stream``
    One message of 100 MiB written in 64 KiB pieces: how far the peak RSS grows over the
    baseline while it is sealed and appended (it should stay a few MiB, whatever the size).

Message bodies are base64 text cut from one pool of random bytes behind realistic headers,
so zstd (level 3, as the sealer uses) saves about a quarter, as on real mail with
attachments; the ratio actually measured is printed. Pieces are sliced from the pool as they
are written, so the benchmark itself holds no whole message in memory.

Run ``python tools/bench/log_bench.py --help``; tools/bench/README.md explains each number.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import trio
import zstandard

from gateway.crypto import KdfParams
from gateway.events import Envelope, now
from gateway.services.archive import Archive, StoreConfig
from gateway.services.keyforge import KeyForge

KIB = 1024
MIB = 1024 * KIB
MB = 1_000_000  # MB/s in the report are decimal megabytes of message plaintext

TARGET_APPENDS_PER_S = 5_000
BATCH = 32  # messages per fdatasync in the batched floor
PIECE = 64 * KIB  # what one MessageWriter.write() carries (an SMTP server's read size)
POOL_BYTES = 4 * MIB  # base64 text the bodies are cut from; above zstd level 3's 2 MiB window
ZSTD_LEVEL = 3  # gateway.crypto._seal compresses at this level
# Argon2id only runs when a mailbox is created or unlocked, never on the append path; at the
# default 64 MiB it would dominate every scenario's peak RSS, so the benchmark uses the
# smallest legal cost (as the tests do). Everything else is StoreConfig's default.
BENCH_KDF = KdfParams(memory_kib=64, iterations=1, lanes=1)

Kind = Literal["gateway", "floor", "stream"]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: Kind
    message_bytes: int
    writers: int = 1
    mailboxes: int = 1
    sync_every: int = 1  # floor only: messages per fdatasync


@dataclass(slots=True)
class Result:
    name: str
    kind: Kind
    message_bytes: int
    writers: int
    mailboxes: int
    messages: int = 0
    seconds: float = 0.0
    appends_per_s: float = 0.0
    mb_per_s: float = 0.0  # plaintext for gateway/stream, bytes written for floor
    cpu_s: float = 0.0
    cpu_ms_per_msg: float = 0.0
    peak_rss_mib: float = 0.0
    baseline_rss_mib: float = 0.0  # peak RSS just before the measured window
    disk_bytes_per_msg: float = 0.0  # what reached the log (or the floor file) per message
    commit_p50_ms: float = 0.0
    commit_p99_ms: float = 0.0
    batches: int = 0  # gateway: log writes (group commits); floor: fdatasyncs
    records_per_batch: float = 0.0
    notes: dict[str, float] = field(default_factory=dict)


def _size_label(size: int) -> str:
    return f"{size // MIB}m" if size % MIB == 0 else f"{size // KIB}k"


def scenarios(big_bytes: int) -> list[Scenario]:
    """Every scenario, in the order they run (floors after the gateway runs they mirror)."""
    out: list[Scenario] = []
    for size in (10 * KIB, 1 * MIB):
        label = _size_label(size)
        for writers, mailboxes in ((1, 1), (32, 1), (32, 32)):
            out.append(
                Scenario(
                    f"gateway-{label}-{writers}w-{mailboxes}mb", "gateway", size, writers, mailboxes
                )
            )
    for size in (10 * KIB, 1 * MIB):
        label = _size_label(size)
        out.append(Scenario(f"floor-{label}-sync1", "floor", size, sync_every=1))
        out.append(Scenario(f"floor-{label}-sync{BATCH}", "floor", size, sync_every=BATCH))
    out.append(Scenario(f"stream-{_size_label(big_bytes)}", "stream", big_bytes))
    return out


# -- message bodies ------------------------------------------------------------------------


def make_pool(size: int = POOL_BYTES, seed: int = 1) -> bytes:
    """Base64 text in 76-character CRLF lines (RFC 2045 §6.8) over random bytes."""
    rng = random.Random(seed)
    raw = rng.randbytes(size * 3 // 4)
    return base64.encodebytes(raw).replace(b"\n", b"\r\n")[:size]


def _headers(n: int, size: int) -> bytes:
    return (
        f"Return-Path: <sender{n % 97}@example.com>\r\n"
        f"Received: from mx{n % 7}.example.com (mx{n % 7}.example.com [192.0.2.{n % 250}])\r\n"
        f"\tby archive.example.org with ESMTPS id {n:016x}; {time.ctime()}\r\n"
        f"Message-ID: <{n:x}.{size}@bench.example.com>\r\n"
        f"Date: {time.ctime()} +0000\r\n"
        f"From: Sender {n % 97} <sender{n % 97}@example.com>\r\n"
        f"To: Archive <user{n % 13}@example.org>\r\n"
        f"Subject: Quarterly report {n}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: application/pdf; name="report.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
    ).encode()


def message_pieces(
    pool: bytes, rng: random.Random, n: int, size: int, piece: int = PIECE
) -> Iterator[bytes]:
    """One message of exactly ``size`` octets, ``piece`` octets at a time: headers, then
    base64 text from a random line of the pool (wrapping around for very large messages)."""
    head = _headers(n, size)[:size]
    line = 78
    offset = rng.randrange(len(pool) // line) * line
    remaining = size
    buf = head
    while remaining > 0:
        while len(buf) < min(piece, remaining):
            take = min(piece - len(buf), len(pool) - offset)
            buf += pool[offset : offset + take]
            offset = (offset + take) % len(pool)
        out, buf = buf[: min(piece, remaining)], buf[min(piece, remaining) :]
        remaining -= len(out)
        yield out


def compressed_ratio(pool: bytes, size: int) -> float:
    """zstd level-3 output over input for one sample message of ``size`` octets."""
    data = b"".join(message_pieces(pool, random.Random(7), 0, size))
    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)) / len(data)


# -- process measurements ------------------------------------------------------------------


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * KIB  # Linux reports KiB


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree_bytes(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            total += os.stat(os.path.join(folder, name)).st_size
    return total


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


@dataclass(slots=True)
class Budget:
    """Stop after ``seconds`` or ``count`` messages, whichever comes first."""

    deadline: float
    count: int | None
    issued: int = 0

    def claim(self) -> bool:
        if time.perf_counter() >= self.deadline:
            return False
        if self.count is not None and self.issued >= self.count:
            return False
        self.issued += 1
        return True


# -- the scenarios, each in its own process ------------------------------------------------


def _envelope(n: int) -> Envelope:
    return Envelope(
        received_at=now(),
        origin="journal",
        mail_from=f"sender{n % 97}@example.com",
        rcpt_to=(f"user{n % 13}@example.org",),
    )


async def _prime(archive: Archive, forge: KeyForge, mailbox_ids: list[str]) -> None:
    """Let the key forge fill its pools before the clock starts, as it has on a server that
    has been running for a while (one message per mailbox asks for the first batch)."""
    for mailbox_id in mailbox_ids:
        message = archive.begin_message([mailbox_id])
        await message.write(b"warm-up")
        await message.commit(_envelope(0))
    with trio.move_on_after(5):
        while forge.statistics()["pooled"] < forge.batch * len(mailbox_ids):  # noqa: ASYNC110
            await trio.sleep(0.01)


def child_cpu_seconds(forge: KeyForge | None) -> float:
    """CPU seconds of the key forge's child process so far (it runs throughout, so
    RUSAGE_CHILDREN, which counts only children that ended, would miss it)."""
    if forge is None or forge.pid is None:
        return 0.0
    fields = Path(f"/proc/{forge.pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


async def run_gateway(
    scenario: Scenario,
    root: Path,
    seconds: float,
    count: int | None,
    profile: Path | None,
    use_forge: bool = True,
) -> Result:
    result = Result(
        scenario.name, scenario.kind, scenario.message_bytes, scenario.writers, scenario.mailboxes
    )
    pool = make_pool()
    archive = await Archive.open(root, StoreConfig(kdf=BENCH_KDF))
    try:
        mailbox_ids = [
            (await archive.create_mailbox(f"bench-{i}"))[0].mailbox_id
            for i in range(scenario.mailboxes)
        ]
        latencies: list[float] = []
        disk_before = tree_bytes(root / "mailboxes")
        result.baseline_rss_mib = peak_rss_bytes() / MIB

        async def writer(w: int, budget: Budget) -> None:
            rng = random.Random(w)
            target = [mailbox_ids[w % len(mailbox_ids)]]
            while budget.claim():
                n = budget.issued
                started = time.perf_counter()
                message = archive.begin_message(target)
                for piece in message_pieces(pool, rng, n, scenario.message_bytes):
                    await message.write(piece)
                await message.commit(_envelope(n))
                latencies.append(time.perf_counter() - started)

        profiler = cProfile.Profile() if profile is not None else None
        async with trio.open_nursery() as outer:
            forge = None
            if use_forge:
                forge = KeyForge()
                await outer.start(forge.run)
                archive.key_forge = forge
                await _prime(archive, forge, mailbox_ids)
            cpu0, t0 = cpu_seconds() + child_cpu_seconds(forge), time.perf_counter()
            budget = Budget(t0 + seconds, count)
            if profiler is not None:
                profiler.enable()
            async with trio.open_nursery() as nursery:
                for w in range(scenario.writers):
                    nursery.start_soon(writer, w, budget)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(str(profile))
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds() + child_cpu_seconds(forge) - cpu0
            if forge is not None:
                result.notes["forge_served"] = forge.served
                result.notes["forge_missed"] = forge.missed
            outer.cancel_scope.cancel()
        _batch_stats(result, archive)
        disk = tree_bytes(root / "mailboxes") - disk_before
    finally:
        await archive.aclose()
    latencies.sort()
    _fill(result, len(latencies), elapsed, cpu, scenario.message_bytes)
    result.disk_bytes_per_msg = disk / max(1, result.messages)
    result.commit_p50_ms = percentile(latencies, 0.50) * 1000
    result.commit_p99_ms = percentile(latencies, 0.99) * 1000
    return result


def run_floor(
    scenario: Scenario, root: Path, seconds: float, count: int | None, record_bytes: int
) -> Result:
    result = Result(scenario.name, scenario.kind, record_bytes, 1, 0)
    root.mkdir(parents=True, exist_ok=True)
    data = random.Random(3).randbytes(record_bytes)
    result.baseline_rss_mib = peak_rss_bytes() / MIB
    fd = os.open(root / "floor.dat", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        latencies: list[float] = []
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        budget = Budget(t0 + seconds, count)
        messages = syncs = 0
        batch_start = t0

        def sync() -> None:
            nonlocal syncs, batch_start
            os.fdatasync(fd)
            syncs += 1
            done = time.perf_counter()
            latencies.append(done - batch_start)
            batch_start = done

        while budget.claim():
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            messages += 1
            if messages % scenario.sync_every == 0:
                sync()
        if messages % scenario.sync_every:
            sync()
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    finally:
        os.close(fd)
    _fill(result, messages, elapsed, cpu, record_bytes)
    result.disk_bytes_per_msg = float(record_bytes)
    result.batches = syncs
    result.records_per_batch = messages / syncs if syncs else 0.0
    latencies.sort()
    result.commit_p50_ms = percentile(latencies, 0.50) * 1000
    result.commit_p99_ms = percentile(latencies, 0.99) * 1000
    return result


async def run_stream(scenario: Scenario, root: Path) -> Result:
    result = Result(scenario.name, scenario.kind, scenario.message_bytes, 1, 1)
    pool = make_pool()
    archive = await Archive.open(root, StoreConfig(kdf=BENCH_KDF))
    try:
        info, _password = await archive.create_mailbox("bench-stream")
        disk_before = tree_bytes(root / "mailboxes")
        result.baseline_rss_mib = peak_rss_bytes() / MIB
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        message = archive.begin_message([info.mailbox_id])
        pieces = message_pieces(pool, random.Random(5), 0, scenario.message_bytes)
        for piece in pieces:
            await message.write(piece)
        await message.commit(_envelope(0))
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        disk = tree_bytes(root / "mailboxes") - disk_before
        _batch_stats(result, archive)
    finally:
        await archive.aclose()
    _fill(result, 1, elapsed, cpu, scenario.message_bytes)
    result.disk_bytes_per_msg = float(disk)
    result.commit_p50_ms = result.commit_p99_ms = elapsed * 1000
    result.notes["rss_growth_mib"] = result.peak_rss_mib - result.baseline_rss_mib
    result.notes["stored_ratio"] = disk / scenario.message_bytes
    return result


def _batch_stats(result: Result, archive: Archive) -> None:
    stats = list(archive.log_statistics().values())
    result.batches = sum(s["batches"] for s in stats)
    records = sum(s["records"] for s in stats)
    result.records_per_batch = records / result.batches if result.batches else 0.0


def _fill(result: Result, messages: int, elapsed: float, cpu: float, size: int) -> None:
    result.messages = messages
    result.seconds = elapsed
    result.appends_per_s = messages / elapsed if elapsed > 0 else 0.0
    result.mb_per_s = messages * size / elapsed / MB if elapsed > 0 else 0.0
    result.cpu_s = cpu
    result.cpu_ms_per_msg = cpu / messages * 1000 if messages else 0.0
    result.peak_rss_mib = peak_rss_bytes() / MIB


def run_scenario(args: argparse.Namespace) -> int:
    """The child side: run one scenario and print its Result as one JSON line."""
    big = args.big_mib * MIB
    by_name = {s.name: s for s in scenarios(big)}
    scenario = by_name.get(args.scenario)
    if scenario is None:
        print(f"unknown scenario {args.scenario}; known: {', '.join(by_name)}", file=sys.stderr)
        return 2
    # Run by hand (for profiling) without --dir: a temporary folder, removed afterwards.
    temporary = None if args.dir else Path(tempfile.mkdtemp(prefix="log_bench-"))
    root = Path(args.dir) if args.dir else Path(str(temporary)) / "data"
    try:
        if scenario.kind == "gateway":
            result = trio.run(
                run_gateway,
                scenario,
                root,
                args.seconds,
                args.count,
                args.profile,
                not args.no_forge,
            )
        elif scenario.kind == "floor":
            record_bytes = args.record_bytes or scenario.message_bytes
            result = run_floor(scenario, root, args.seconds, args.count, record_bytes)
        else:
            result = trio.run(run_stream, scenario, root)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
    print(json.dumps(asdict(result)))
    return 0


# -- the parent: run every scenario, then report -------------------------------------------


def _child(args: argparse.Namespace, scenario: Scenario, folder: Path, record_bytes: int) -> Result:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--scenario",
        scenario.name,
        "--dir",
        str(folder),
        "--seconds",
        str(args.seconds),
        "--big-mib",
        str(args.big_mib),
        "--record-bytes",
        str(record_bytes),
    ]
    if args.count is not None:
        command += ["--count", str(args.count)]
    if args.no_forge:
        command.append("--no-forge")
    # A scenario stops itself after --seconds; the timeout only guards against a hang.
    timeout = args.seconds * 4 + 300
    done = subprocess.run(command, stdout=subprocess.PIPE, check=True, timeout=timeout)
    return Result(**json.loads(done.stdout.decode().strip().splitlines()[-1]))


def run_all(args: argparse.Namespace) -> int:
    big = args.big_mib * MIB
    wanted = scenarios(big)
    if args.only:
        wanted = [s for s in wanted if any(part in s.name for part in args.only)]
    base = Path(args.dir) if args.dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="log_bench-", dir=base or "/tmp"))
    pool = make_pool()
    ratios = {_size_label(s): compressed_ratio(pool, s) for s in (10 * KIB, 1 * MIB)}
    results: list[Result] = []
    observed: dict[int, float] = {}  # message size -> bytes the log took per message
    try:
        for scenario in wanted:
            record_bytes = 0
            if scenario.kind == "floor":
                # The floor writes what the gateway wrote per message; an estimate if the
                # gateway scenarios were not run.
                estimate = scenario.message_bytes * ratios[_size_label(scenario.message_bytes)]
                record_bytes = round(observed.get(scenario.message_bytes, estimate + 1600))
            print(f"running {scenario.name} ...", file=sys.stderr, flush=True)
            folder = workdir / scenario.name
            try:
                result = _child(args, scenario, folder, record_bytes)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if scenario.kind == "gateway" and result.messages:
                observed.setdefault(scenario.message_bytes, result.disk_bytes_per_msg)
            results.append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = _summary(results, ratios, workdir.parent, args)
    table = render(results, summary)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps({"results": [asdict(r) for r in results], "summary": summary}, indent=2))
    else:
        print(table)
    return 0


def _summary(
    results: list[Result], ratios: dict[str, float], folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    by_name = {r.name: r for r in results}
    floor = by_name.get(f"floor-10k-sync{BATCH}")
    out: dict[str, Any] = {
        "folder": str(folder),
        "seconds_per_scenario": args.seconds,
        "count_per_scenario": args.count,
        "zstd_level3_ratio": ratios,
        "target_appends_per_s": TARGET_APPENDS_PER_S,
        "ratios": {},
    }
    for name in ("gateway-10k-32w-1mb", "gateway-10k-32w-32mb"):
        gateway = by_name.get(name)
        if gateway is None:
            continue
        entry: dict[str, float] = {"vs_target": gateway.appends_per_s / TARGET_APPENDS_PER_S}
        if floor is not None and floor.appends_per_s:
            entry["vs_batched_floor"] = gateway.appends_per_s / floor.appends_per_s
        out["ratios"][name] = entry
    return out


def render(results: list[Result], summary: dict[str, Any]) -> str:
    columns: list[tuple[str, str, Callable[[Result], object]]] = [
        ("scenario", "{:<22}", lambda r: r.name),
        ("msgs", "{:>7}", lambda r: r.messages),
        ("appends/s", "{:>9.0f}", lambda r: r.appends_per_s),
        ("MB/s", "{:>7.1f}", lambda r: r.mb_per_s),
        ("CPU s", "{:>6.2f}", lambda r: r.cpu_s),
        ("CPU ms/msg", "{:>10.3f}", lambda r: r.cpu_ms_per_msg),
        ("peak RSS MiB", "{:>12.1f}", lambda r: r.peak_rss_mib),
        ("base MiB", "{:>8.1f}", lambda r: r.baseline_rss_mib),
        ("disk B/msg", "{:>10.0f}", lambda r: r.disk_bytes_per_msg),
        ("p50 ms", "{:>7.2f}", lambda r: r.commit_p50_ms),
        ("p99 ms", "{:>7.2f}", lambda r: r.commit_p99_ms),
        ("batches", "{:>7}", lambda r: r.batches),
        ("rec/batch", "{:>9.1f}", lambda r: r.records_per_batch),
    ]
    rows = [[fmt.format(getter(r)).strip() for _t, fmt, getter in columns] for r in results]
    titles = [title for title, _f, _g in columns]
    widths = [max([len(title)] + [len(row[i]) for row in rows]) for i, title in enumerate(titles)]
    lines = [
        "  ".join(
            t.ljust(w) if i == 0 else t.rjust(w)
            for i, (t, w) in enumerate(zip(titles, widths, strict=True))
        )
    ]
    lines.append("-" * len(lines[0]))
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines.append("")
    ratios = summary["zstd_level3_ratio"]
    lines.append(
        "compressibility (zstd level 3, output/input): "
        + ", ".join(f"{k}: {v:.1%}" for k, v in ratios.items())
    )
    for r in results:
        if r.kind == "stream":
            lines.append(
                f"{r.name}: one {r.message_bytes // MIB} MiB message in {PIECE // KIB} KiB pieces: "
                f"{r.seconds:.2f} s, {r.mb_per_s:.1f} MB/s, peak RSS grew "
                f"{r.notes['rss_growth_mib']:.1f} MiB over a baseline of "
                f"{r.baseline_rss_mib:.1f} MiB"
            )
    for name, entry in summary["ratios"].items():
        parts = [f"{entry['vs_target']:.2f}x the {TARGET_APPENDS_PER_S} appends/s target"]
        if "vs_batched_floor" in entry:
            parts.append(
                f"{entry['vs_batched_floor']:.2f}x the batched floor (floor-10k-sync{BATCH})"
            )
        lines.append(f"{name}: " + ", ".join(parts))
    lines.append(f"data folder: a temporary folder under {summary['folder']} (removed)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Durable appends/s, MB/s, CPU and peak RSS of the archive's message log, "
        "against plain write+fdatasync on the same disk."
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="time bound per scenario")
    parser.add_argument("--count", type=int, default=None, help="message bound per scenario")
    parser.add_argument(
        "--dir", default=None, help="folder for the data (a temporary folder under /tmp if unset)"
    )
    parser.add_argument("--big-mib", type=int, default=100, help="size of the streamed message")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s per scenario")
    parser.add_argument(
        "--only", action="append", help="run scenarios whose name contains this (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (the table to stderr)")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="with --scenario: cProfile the measured window (trio thread) into this file",
    )
    parser.add_argument(
        "--no-forge",
        action="store_true",
        help="seal every data key on the event loop (no key forge process), to compare",
    )
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--record-bytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 1.0)
        args.big_mib = min(args.big_mib, 16)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scenario:
        return run_scenario(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
