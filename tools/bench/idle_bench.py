"""Idle memory benchmark: what ``gateway serve`` holds in memory idle, and with 1,000 idle
SMTP connections spread over its protocol workers (issue 13's target: under 200 MiB in all).

Theory of operation
-------------------
For each ``--workers N`` (default 2), a ``python -m gateway serve`` with a fresh data folder,
an SMTP listener (STARTTLS, not used) and the admin listener on 127.0.0.1, and ``[server]
workers = N``. Once the supervisor reports ready and ``--settle`` seconds have passed, the
memory of its whole process tree is read from /proc (``idle``): the supervisor, the journal,
every worker, and with ``--workers 0`` the one process and its key forge child.

Then ``--connections`` plain TCP connections to the SMTP listener, one after the other: each
reads its 220 greeting and then says nothing. Once all are open and ``--settle`` seconds have
passed, the tree's memory is read again (``connections``), and from /proc/PID/fd and
/proc/net/tcp which worker holds each connection. Then every connection is checked to be
still open (the gateway closes an SMTP session that says nothing for ``smtp.command_timeout``,
300 s: the whole window stays under a quarter of that), all are closed, and after
``--settle`` seconds the memory is read a third time (``after``: what the sessions left).

Session limits apply per worker (SPEC.md 16.1): ``smtp.max_sessions`` 500 and
``smtp.max_sessions_per_client`` 50 by default, and every connection here comes from
127.0.0.1, so the defaults would refuse most of them (421 4.7.0 at connect). The benchmark
sets both to ``--connections`` + 100 in each worker, as a gateway meant for that many clients
would; ``--default-limits`` keeps the defaults and counts the refusals.

Memory: VmRSS summed over the processes (shared library pages counted in each, as ``ps``
would), and Pss (each shared page divided among the processes that map it), from
/proc/PID/smaps_rollup. The kernel's socket buffers are not in either; /proc/net/sockstat's
TCP ``mem`` (pages) is shown beside them.

    .venv/bin/python tools/bench/idle_bench.py                        # 2 workers, 1,000 connections
    .venv/bin/python tools/bench/idle_bench.py --workers 1 --workers 2 --workers 4
    .venv/bin/python tools/bench/idle_bench.py --default-limits       # what the defaults refuse
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    KIB,
    GatewayProcess,
    Memory,
    gateway_process,
    tree_memory,
    workers_setting,
)

MIB = 1024 * KIB
TARGET_MIB = 200.0  # the target: 1,000 idle SMTP connections in under 200 MiB
COMMAND_TIMEOUT = 300.0  # smtp.command_timeout's default (SPEC.md 10): an idle session's end
GREETING_TIMEOUT = 30.0  # seconds one connection may take to be greeted
SPARE_DESCRIPTORS = 256  # besides one per connection, for this process's own files


# -- connections ---------------------------------------------------------------------------


@dataclass
class Opened:
    sockets: list[socket.socket] = field(default_factory=list)  # greeted 220, held open
    refused: int = 0  # greeted 421 (a session limit), closed by the gateway
    failed: int = 0  # no greeting: reset, closed, timed out
    seconds: float = 0.0
    refusals: list[str] = field(default_factory=list)  # the first few 421 lines


def greeting(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(512)
        if not chunk:
            break
        line += chunk
    return line


def open_connections(port: int, count: int) -> Opened:
    """``count`` connections to 127.0.0.1:port, each read up to its greeting."""
    opened = Opened()
    started = time.perf_counter()
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=GREETING_TIMEOUT)
        except OSError:
            opened.failed += 1
            continue
        try:
            line = greeting(sock)
        except OSError:
            line = b""
        if line.startswith(b"220"):
            opened.sockets.append(sock)
            continue
        sock.close()
        if line.startswith(b"421"):
            opened.refused += 1
            if len(opened.refusals) < 3:
                opened.refusals.append(line.decode(errors="replace").strip())
        else:
            opened.failed += 1
    opened.seconds = time.perf_counter() - started
    return opened


def still_open(sockets: list[socket.socket]) -> int:
    """How many connections the gateway has neither closed nor written to since the 220."""
    alive = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            data = sock.recv(512)
        except BlockingIOError:
            alive += 1  # nothing to read, no end of stream: open and quiet
            continue
        except OSError:
            continue
        if data:
            print(f"the gateway said {data!r} to an idle connection", file=sys.stderr)
    return alive


def raise_descriptor_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"{needed} open files needed, the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


# -- which process holds which connection -----------------------------------------------


def established_inodes(port: int) -> set[int]:
    """Socket inodes of the established TCP connections whose local port is ``port`` (the
    server's side of each connection to the listener)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(int(fields[9]))
    return inodes


def connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """{pid: established connections on ``port`` among its open files}."""
    established = established_inodes(port)
    out = {}
    for pid in pids:
        held = 0
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            fds = []
        for fd in fds:
            try:
                target = fd.readlink().name
            except OSError:
                continue
            found = re.fullmatch(r"socket:\[(\d+)\]", target)
            if found and int(found.group(1)) in established:
                held += 1
        out[pid] = held
    return out


def tcp_memory_pages() -> int:
    """The kernel's TCP buffer memory (pages), from /proc/net/sockstat's ``TCP: ... mem N``."""
    found = re.search(r"^TCP:.* mem (\d+)", Path("/proc/net/sockstat").read_text(), re.M)
    return int(found.group(1)) if found else 0


# -- one gateway ---------------------------------------------------------------------------


@dataclass
class ProcessRow:
    pid: int
    name: str
    rss_idle_mib: float
    rss_connections_mib: float
    rss_after_mib: float
    pss_connections_mib: float
    hwm_mib: float
    connections: int


@dataclass
class Result:
    label: str  # w=N
    workers: int
    connections_asked: int
    greeted: int
    refused: int
    failed: int
    open_seconds: float
    window_seconds: float  # first connection to the check that they are still open
    still_open: int
    rss_idle_mib: float
    rss_connections_mib: float
    rss_after_mib: float
    pss_idle_mib: float
    pss_connections_mib: float
    kib_per_connection: float  # tree RSS growth over the connections held
    tcp_mem_kib_idle: int
    tcp_mem_kib_connections: int
    limits: str
    processes: list[ProcessRow]
    refusals: list[str]
    log_events: dict[str, int]
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def target_met(self) -> bool:
        return self.greeted >= self.connections_asked and self.rss_connections_mib < TARGET_MIB


def _by_pid(memory: list[Memory]) -> dict[int, Memory]:
    return {m.pid: m for m in memory}


def limits_setting(args: argparse.Namespace) -> str:
    if args.default_limits:
        return ""
    room = args.connections + 100
    return f"[smtp]\nmax_sessions = {room}\nmax_sessions_per_client = {room}\n"


def run(folder: Path, args: argparse.Namespace, workers: int) -> Result:
    settings = limits_setting(args) + workers_setting(workers)
    with gateway_process(folder, {"smtp": ("smtp", "starttls")}, settings) as gateway:
        return measure(gateway, args, workers)


def measure(gateway: GatewayProcess, args: argparse.Namespace, workers: int) -> Result:
    port = gateway.ports["smtp"]
    time.sleep(args.settle)
    idle = tree_memory(gateway.pid)
    tcp_idle = tcp_memory_pages()
    began = time.monotonic()
    opened = open_connections(port, args.connections)
    try:
        time.sleep(args.settle)
        held = tree_memory(gateway.pid)
        tcp_held = tcp_memory_pages()
        spread = connections_by_process([m.pid for m in held], port)
        alive = still_open(opened.sockets)
        window = time.monotonic() - began
    finally:
        for sock in opened.sockets:
            sock.close()
    if window > COMMAND_TIMEOUT / 4:
        print(f"warning: the window took {window:.0f} s, near the idle timeout", file=sys.stderr)
    time.sleep(args.settle)
    after = _by_pid(tree_memory(gateway.pid))
    before = _by_pid(idle)
    rows = []
    for m in held:
        rows.append(
            ProcessRow(
                pid=m.pid,
                name=m.name,
                rss_idle_mib=before[m.pid].rss / MIB if m.pid in before else 0.0,
                rss_connections_mib=m.rss / MIB,
                rss_after_mib=after[m.pid].rss / MIB if m.pid in after else 0.0,
                pss_connections_mib=m.pss / MIB,
                hwm_mib=m.hwm / MIB,
                connections=spread.get(m.pid, 0),
            )
        )
    log = gateway.log.read_text(errors="replace")
    events = {
        name: len(re.findall(rf"event={name}\b", log))
        for name in ("session-limit-lowered", "connections-summarized", "child-exited")
    }
    greeted = len(opened.sockets)
    page = resource.getpagesize()
    return Result(
        label=f"w={workers}",
        workers=workers,
        connections_asked=args.connections,
        greeted=greeted,
        refused=opened.refused,
        failed=opened.failed,
        open_seconds=opened.seconds,
        window_seconds=window,
        still_open=alive,
        rss_idle_mib=sum(m.rss for m in idle) / MIB,
        rss_connections_mib=sum(m.rss for m in held) / MIB,
        rss_after_mib=sum(m.rss for m in after.values()) / MIB,
        pss_idle_mib=sum(m.pss for m in idle) / MIB,
        pss_connections_mib=sum(m.pss for m in held) / MIB,
        kib_per_connection=(sum(m.rss for m in held) - sum(m.rss for m in idle))
        / KIB
        / max(1, greeted),
        tcp_mem_kib_idle=tcp_idle * page // KIB,
        tcp_mem_kib_connections=tcp_held * page // KIB,
        limits="defaults (max_sessions 500, max_sessions_per_client 50, per worker)"
        if args.default_limits
        else f"max_sessions = max_sessions_per_client = {args.connections + 100} per worker",
        processes=rows,
        refusals=opened.refusals,
        log_events=events,
    )


# -- report --------------------------------------------------------------------------------


def render(r: Result) -> str:
    lines = [
        f"== gateway {r.label}: {r.connections_asked} idle SMTP connections; smtp limits: "
        f"{r.limits}; memory in MiB",
        f"opened in {r.open_seconds:.2f} s: {r.greeted} greeted 220, {r.refused} refused 421, "
        f"{r.failed} failed; {r.still_open} still open {r.window_seconds:.1f} s after the "
        f"first (smtp.command_timeout {COMMAND_TIMEOUT:.0f} s)",
    ]
    if r.refusals:
        lines.append(f"refused with: {r.refusals[0]!r}")
    header = (
        f"{'process':<11}{'pid':>8}{'RSS idle':>10}{'RSS conns':>11}{'delta':>8}"
        f"{'RSS after':>11}{'PSS conns':>11}{'VmHWM':>8}{'conns':>7}"
    )
    lines += ["", header]
    for p in r.processes:
        lines.append(
            f"{p.name:<11}{p.pid:>8}{p.rss_idle_mib:>10.1f}{p.rss_connections_mib:>11.1f}"
            f"{p.rss_connections_mib - p.rss_idle_mib:>+8.1f}{p.rss_after_mib:>11.1f}"
            f"{p.pss_connections_mib:>11.1f}{p.hwm_mib:>8.1f}{p.connections:>7}"
        )
    held = sum(p.connections for p in r.processes)
    lines.append(
        f"{'tree':<11}{'':>8}{r.rss_idle_mib:>10.1f}{r.rss_connections_mib:>11.1f}"
        f"{r.rss_connections_mib - r.rss_idle_mib:>+8.1f}{r.rss_after_mib:>11.1f}"
        f"{r.pss_connections_mib:>11.1f}{'':>8}{held:>7}"
    )
    lines += [
        "",
        f"per connection: {r.kib_per_connection:.1f} KiB of RSS (tree growth / connections "
        f"greeted); PSS idle {r.pss_idle_mib:.1f} MiB -> {r.pss_connections_mib:.1f} MiB",
        f"kernel TCP buffers (/proc/net/sockstat, whole machine): {r.tcp_mem_kib_idle} KiB "
        f"idle -> {r.tcp_mem_kib_connections} KiB with the connections",
        "gateway log: " + ", ".join(f"event={k} x{v}" for k, v in r.log_events.items()),
        f"target: {r.connections_asked} idle SMTP connections in under {TARGET_MIB:.0f} MiB "
        f"(tree RSS {r.rss_connections_mib:.1f} MiB, {r.greeted} held): "
        + ("met" if r.target_met else "NOT met"),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Memory of gateway serve idle and with many idle SMTP connections, per "
        "process (supervisor, journal, workers) and in all."
    )
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        help="protocol workers (repeatable, one gateway each; default 2)",
    )
    parser.add_argument("--connections", type=int, default=1000, help="idle connections")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before each reading"
    )
    parser.add_argument(
        "--default-limits",
        action="store_true",
        help="keep the gateway's default SMTP session limits (they refuse most connections "
        "from one address)",
    )
    parser.add_argument("--dir", default=None, help="folder for the data (default: /tmp)")
    parser.add_argument("--json", action="store_true", help="print JSON (the tables to stderr)")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 50_000:
        parser.error("--connections must be 1 to 50000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_descriptor_limit(args.connections + SPARE_DESCRIPTORS)
    results = []
    base = Path(args.dir) if args.dir else None
    with tempfile.TemporaryDirectory(prefix="idle_bench-", dir=base) as temp:
        for workers in args.workers or [2]:
            folder = Path(temp) / f"w{workers}"
            folder.mkdir()
            print(f"running gateway w={workers} ...", file=sys.stderr, flush=True)
            results.append(run(folder, args, workers))
    text = "\n\n".join(render(r) for r in results)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
