"""SMTP intake benchmark: Postfix's load generator ``smtp-source`` against the gateway, against
Postfix's own smtpd accepting into its queue, and against aiosmtpd with a handler that appends
and fsyncs, in one run on the same disk.

smtp-source opens a connection per message (no ``-d``). The Postfix is a private instance from
tests/peers (``private_postfix(deliver="defer")``): a sink whose queue manager defers every
message once, untried, and leaves it in the deferred queue.

Every server runs as its own process tree; its CPU seconds (user + system, children included)
and peak RSS (sum of the tree's VmHWM) are read from /proc while it runs. Messages/s is
messages over the wall time smtp-source took.

    .venv/bin/python tools/bench/smtp_bench.py                 # 20,000 x 10 KiB, 20 sessions
    .venv/bin/python tools/bench/smtp_bench.py --messages 2000 # a quick run
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import trio
from _common import smtp_source

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.crypto import KdfParams  # noqa: E402
from gateway.services.archive import Archive, StoreConfig  # noqa: E402
from tests import peers  # noqa: E402

FAST_KDF = KdfParams(memory_kib=64, iterations=1, lanes=1)  # only mailbox creation uses it
SETTLE_TIMEOUT = 300.0  # seconds Postfix's queue manager may take to defer the last messages


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    messages_per_s: float
    cpu_s: float
    peak_rss_mib: float
    stored: int


def tree_pids(pid: int) -> list[int]:
    pids = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for token in child.read_text().split():
            pids.extend(tree_pids(int(token)))
    return pids


def cpu_and_rss(pid: int) -> tuple[float, int]:
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, rss = 0.0, 0
    for each in tree_pids(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            # utime + stime, and cutime + cstime: children that ended (and were reaped)
            # count through their parent.
            cpu += sum(int(x) for x in fields[11:15]) / ticks
            status = Path(f"/proc/{each}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        rss += int(match.group(1)) * 1024 if match else 0
    return cpu, rss


class Sampler:
    """Keeps the largest CPU and RSS seen for a process tree (children that exit take their
    CPU with them, so sample often)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu = 0.0
        self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        cpu, rss = cpu_and_rss(self.pid)
        self.cpu, self.rss = max(self.cpu, cpu), max(self.rss, rss)

    def __enter__(self) -> Sampler:
        self.sample()
        self.base_cpu = self.cpu
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# -- the gateway --------------------------------------------------------------------------


def run_gateway(folder: Path, args: argparse.Namespace, workers: int | None = None) -> Result:
    """``gateway serve`` with ``workers`` protocol workers (None: its default)."""
    data = folder / "gateway"

    async def create() -> str:
        archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
        try:
            return (await archive.create_mailbox("bench"))[0].mailbox_id
        finally:
            await archive.aclose()

    mailbox_id = trio.run(create)
    config = folder / "gateway.toml"
    config.write_text(
        f'data_dir = "{data}"\n[[listeners]]\nname = "smtp"\nprotocol = "smtp"\nport = 0\n'
        + (f"[server]\nworkers = {workers}\n" if workers is not None else "")
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    port = 0
    for line in process.stderr:
        match = re.search(r"event=listening name=smtp .* port=(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    if not port:
        process.kill()
        raise SystemExit("the gateway did not start")
    threading.Thread(target=lambda: process.stderr and process.stderr.read(), daemon=True).start()
    time.sleep(1)  # let the key forge fill its pool, as on a server that has been running
    try:
        with Sampler(process.pid) as sampler:
            seconds = smtp_source(
                port, args.messages, args.sessions, args.size, f"mbx-{mailbox_id}@localhost"
            )
    finally:
        process.terminate()
        process.wait(timeout=60)

    async def count() -> int:
        archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
        try:
            return len(archive.messages(mailbox_id))
        finally:
            await archive.aclose()

    return _result("gateway", args, seconds, sampler, trio.run(count))


# -- aiosmtpd ------------------------------------------------------------------------------

AIOSMTPD_SERVER = r"""
import asyncio, os, sys
from aiosmtpd.smtp import SMTP

class Handler:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.count = 0
    async def handle_DATA(self, server, session, envelope):
        os.write(self.fd, envelope.original_content)
        os.fsync(self.fd)
        self.count += 1
        return "250 OK"

async def main():
    handler = Handler(sys.argv[1])
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    print(handler.count, flush=True)

asyncio.run(main())
"""


def run_aiosmtpd(folder: Path, args: argparse.Namespace) -> Result:
    process = subprocess.Popen(
        [sys.executable, "-c", AIOSMTPD_SERVER, str(folder / "aiosmtpd.mbox")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    port = int(process.stdout.readline())
    with Sampler(process.pid) as sampler:
        seconds = smtp_source(port, args.messages, args.sessions, args.size, "x@localhost")
    process.stdin.close()
    stored = int(process.stdout.readline() or 0)
    process.wait(timeout=30)
    return _result("aiosmtpd+fsync", args, seconds, sampler, stored)


# -- Postfix --------------------------------------------------------------------------------


def run_postfix(folder: Path, args: argparse.Namespace) -> Result:
    """Postfix's smtpd accepting into its queue (fsynced before the 250, as Postfix always
    does), every message deferred there once, so no delivery work is measured. Stored is
    what the deferred queue holds once nothing is moving any more."""
    with peers.private_postfix(folder, deliver="defer") as sink:
        master = sink.master_pid()
        if master is None:
            raise SystemExit(f"the private Postfix has no master pid:\n{sink.log_text()}")
        with Sampler(master) as sampler:
            seconds = smtp_source(
                sink.port, args.messages, args.sessions, args.size, "x@sink.invalid"
            )
        stored = len(sink.wait_until_queue_settled(SETTLE_TIMEOUT))
    return _result("postfix smtpd", args, seconds, sampler, stored)


def _result(
    name: str, args: argparse.Namespace, seconds: float, sampler: Sampler, stored: int
) -> Result:
    return Result(
        name=name,
        messages=args.messages,
        seconds=round(seconds, 3),
        messages_per_s=round(args.messages / seconds, 1),
        cpu_s=round(sampler.cpu - sampler.base_cpu, 2),
        peak_rss_mib=round(sampler.rss / 2**20, 1),
        stored=stored,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--dir", type=Path, default=None, help="where the data goes (default /tmp)")
    parser.add_argument("--only", action="append", help="gateway, postfix or aiosmtpd")
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        help="run the gateway with this many protocol workers (repeat for several runs; "
        "default: its own default, one per core)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("smtp-source") is None:
        raise SystemExit("smtp-source is missing: install Debian's postfix (`make test` does)")
    runners: dict[str, Callable[[Path, argparse.Namespace], Result]] = {}
    for workers in args.workers or [None]:
        label = "gateway" if workers is None else f"gateway w={workers}"
        runners[label] = functools.partial(run_gateway, workers=workers)
    runners |= {"postfix": run_postfix, "aiosmtpd": run_aiosmtpd}
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="smtp_bench-") as temp:
        # Postfix's own user must reach its queue there (else it goes to /tmp: see
        # tests/peers/README.md), so that every server writes to the same disk.
        Path(temp).chmod(0o755)
        for name, runner in runners.items():
            if args.only and name.split()[0] not in args.only:
                continue
            folder = Path(temp) / name.replace(" ", "-")
            folder.mkdir()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            result = runner(folder, args)
            results.append(dataclasses.replace(result, name=name) if "w=" in name else result)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    header = ("server", "msgs", "seconds", "msgs/s", "CPU s", "peak RSS MiB", "stored")
    widths = (16, 8, 9, 9, 8, 14, 8)
    print(
        "".join(
            f"{h:<{w}}" if i == 0 else f"{h:>{w}}"
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    )
    for r in results:
        print(
            f"{r.name:<16}{r.messages:>8}{r.seconds:>9.2f}{r.messages_per_s:>9.1f}"
            f"{r.cpu_s:>8.2f}{r.peak_rss_mib:>14.1f}{r.stored:>8}"
        )
    by_name = {r.name: r for r in results}
    for gateway in (r for r in results if r.name.startswith("gateway")):
        per_message = 1000 * gateway.cpu_s / max(1, gateway.messages)
        print(f"{gateway.name}: {per_message:.2f} ms CPU per message")
        for other in ("postfix smtpd", "aiosmtpd+fsync"):
            if other in by_name:
                ratio = gateway.messages_per_s / by_name[other].messages_per_s
                print(f"{gateway.name} / {other}: {ratio:.2f}x messages/s")
    for other in ("postfix smtpd", "aiosmtpd+fsync"):
        if other in by_name:
            peer = by_name[other]
            print(f"{other}: {1000 * peer.cpu_s / max(1, peer.messages):.2f} ms CPU per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
