"""Fleet benchmark (issue 16, SPEC.md 17): SMTP intake and POP3S retrieval through gateway
nodes on the fleet store (PostgreSQL), next to one gateway on its local data folder, in one
run on the same disk.

Theory of operation
-------------------
Each configuration gets fresh servers:

``local``
    ``gateway serve`` on a data folder (``[store] backend = "local"``).
``fleet-1``
    one ``gateway serve`` node with ``[store] backend = "postgresql"`` on a private
    PostgreSQL 15 cluster the benchmark starts (tests/peers/postgres.py), its data folder
    holding only its TLS material.
``fleet-2``
    two such nodes on the same cluster: node 1's SMTP and POP3S listeners on 127.0.0.1, node
    2's on 127.0.0.2 with the same ports (each node's admin listener on 127.0.0.1, a port of
    its own).
``fleet-2-follow`` (only when asked for with ``--only``)
    the same two nodes, the whole intake through node 1: node 2's journal only follows, so
    its CPU is what following another node's commits costs (SPEC.md 17.8).
``fleet-1-sync`` (only when asked for with ``--only``)
    one node, its cluster with a synchronous streaming standby on the same machine
    (``tests/peers/postgres.py``'s ``with_standby``): every COMMIT waits for the standby's
    flush, as in production; PostgreSQL's CPU then counts both clusters.

The mailboxes (one for intake, ``--mailboxes`` for retrieval) and an API token are made
through node 1's admin API before node 2 starts, with the smallest Argon2id (logins cost
nothing). Then:

1. **Intake**: smtp-source sends ``--messages`` messages of ``--size`` payload octets, each
   on a connection of its own, over ``--sessions`` sessions, to the intake mailbox. With
   two nodes, two smtp-source processes run at once, one per node, each with half the
   sessions and half the messages. Wall time: from starting them to the last one done.
   Afterwards every node is asked how many messages the mailbox holds (its own view: on the
   fleet, every node should see every node's messages).
2. **POP3S retrieval**: ``--pop3-messages`` messages of ``--pop3-size`` octets are sent over
   SMTP through node 1 (not measured), spread over the retrieval mailboxes; then one client
   session per mailbox, all at once (mailbox m through node m mod nodes, so with two nodes
   half of them read on node 2 what node 1 took in): RETR and DELE of every message, each
   checked against what was sent, then QUIT. Afterwards every node must find every
   retrieval mailbox empty.

For each phase: the CPU seconds of every node's process tree (supervisor, journal, workers,
key forge) and of the PostgreSQL cluster (the postmaster's tree: every backend, the WAL
writer, checkpointer, autovacuum), from /proc before and after (``_common.tree_cpu``); and
the group commit's rounds, from each node's Prometheus histograms (SPEC.md 13.7) scraped
before and after: ``gateway_commit_round_seconds`` (a round, from taking the queued records
to all of them durable: their count, mean and p99, interpolated within its bucket as
Prometheus' ``histogram_quantile`` does) and ``gateway_fsync_seconds`` (the durable part:
the fdatasyncs, or the fleet store's COMMIT). With a cluster, also what PostgreSQL counts:
transactions committed, WAL bytes and WAL syncs.

    .venv/bin/python tools/bench/fleet_bench.py                     # the full run, ~4 min
    .venv/bin/python tools/bench/fleet_bench.py --messages 4000 --pop3-messages 500
    .venv/bin/python tools/bench/fleet_bench.py --only local,fleet-1 --json > fleet.json

Needs Debian's postgresql-15 and postfix (smtp-source), which `make test` installs
(tools/system-packages.sh). See
tools/bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from _common import (
    FAST_KDF_SETTINGS,
    KIB,
    TIMEOUT,
    Corpus,
    GatewayProcess,
    ProtocolError,
    ServiceSampler,
    create_mailbox,
    gateway_check,
    gateway_process,
    mailbox_counts,
    smtp_source,
    spread,
    tree_cpu,
    workers_setting,
)
from pop3_bench import count_left, fill_all, retrieve_all
from prometheus_client.parser import text_string_to_metric_families

from tests.peers.postgres import PostgresServer, private_postgres, with_standby
from tests.peers.tools import free_port

# name -> fleet nodes (0: the data folder), how many of them take the intake, and whether
# the cluster has a synchronous standby
CONFIGS = {
    "local": (0, 1, False),
    "fleet-1": (1, 1, False),
    "fleet-2": (2, 2, False),
    "fleet-2-follow": (2, 1, False),
    "fleet-1-sync": (1, 1, True),
}
DEFAULT_CONFIGS = ("local", "fleet-1", "fleet-2")
LISTENERS = {"smtp": ("smtp", "starttls"), "pop3s": ("pop3", "implicit")}
NODE_ADDRESSES = ("127.0.0.1", "127.0.0.2")
MIB = 1024 * KIB
TARGET = 0.7  # fleet-1 intake / local intake, issue 16
IN_USE_WAIT = 10.0  # seconds a maildrop may stay locked after its session's QUIT was answered
ROUND_HISTOGRAM = "gateway_commit_round_seconds"  # a round: queued records taken to durable
SYNC_HISTOGRAM = "gateway_fsync_seconds"  # its fdatasyncs (the fleet store: its COMMIT)
# PostgreSQL's own default (tests/peers sets 16MB, enough for its tests); the rest as it sets
# them: fsync, full_page_writes and synchronous_commit on.
PG_SETTINGS = {"shared_buffers": "128MB"}


# -- the commit-round histogram ------------------------------------------------------------


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative counts by upper bound (the last one +Inf)."""

    bounds: tuple[float, ...] = ()
    cumulative: tuple[float, ...] = ()
    total: float = 0.0  # the sum of the observations, seconds

    @property
    def count(self) -> float:
        return self.cumulative[-1] if self.cumulative else 0.0

    def _combine(self, other: Histogram, sign: int) -> Histogram:
        if not self.bounds:
            return Histogram(
                other.bounds, tuple(sign * c for c in other.cumulative), sign * other.total
            )
        if other.bounds and other.bounds != self.bounds:
            raise ValueError("histograms with different buckets")
        counts = other.cumulative or (0.0,) * len(self.bounds)
        return Histogram(
            self.bounds,
            tuple(a + sign * b for a, b in zip(self.cumulative, counts, strict=True)),
            self.total + sign * other.total,
        )

    def __add__(self, other: Histogram) -> Histogram:
        return self._combine(other, 1)

    def __sub__(self, other: Histogram) -> Histogram:
        return self._combine(other, -1)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile in seconds as ``histogram_quantile`` estimates it: linear
        within the bucket it falls in; the largest finite bound if it falls beyond."""
        if self.count <= 0:
            return math.nan
        rank = q * self.count
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower
                if cumulative == below:
                    return bound
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return lower

    def bucket(self, q: float) -> str:
        """The bucket the ``q`` quantile falls in, in ms: "5-10"."""
        rank, lower = q * self.count, 0.0
        for bound, cumulative in zip(self.bounds, self.cumulative, strict=True):
            if cumulative >= rank:
                upper = "inf" if math.isinf(bound) else f"{bound * 1000:g}"
                return f"{lower * 1000:g}-{upper}"
            lower = bound
        return "-"


def commit_histograms(node: GatewayProcess, token: str) -> dict[str, Histogram]:
    """The node's group-commit histograms now (ROUND_HISTOGRAM, SYNC_HISTOGRAM), from its
    /metrics (with an API token)."""
    request = urllib.request.Request(
        f"https://localhost:{node.ports['admin']}/metrics",
        headers={"Authorization": f"Bearer {token}"},
    )
    context = ssl.create_default_context(cafile=str(node.cert_file))
    with urllib.request.urlopen(request, context=context, timeout=TIMEOUT) as reply:
        text = reply.read().decode()
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (ROUND_HISTOGRAM, SYNC_HISTOGRAM):
            continue
        buckets, total = [], 0.0
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), float(sample.value)))
            elif sample.name.endswith("_sum"):
                total = float(sample.value)
        buckets.sort()
        found[family.name] = Histogram(
            tuple(b for b, _ in buckets), tuple(c for _, c in buckets), total
        )
    if ROUND_HISTOGRAM not in found:
        raise SystemExit(f"no {ROUND_HISTOGRAM} in the metrics of the node at {node.address}")
    return found


# -- one configuration ---------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase (intake or retrieval) measured."""

    messages: int = 0
    seconds: float = 0.0
    messages_per_s: float = 0.0
    gateway_cpu_s: float = 0.0
    gateway_cpu_ms_per_msg: float = 0.0
    postgres_cpu_s: float = 0.0
    postgres_cpu_ms_per_msg: float = 0.0
    commit_rounds: int = 0
    messages_per_round: float = 0.0
    commit_p99_ms: float | None = None  # None: no round
    commit_p99_bucket_ms: str = "-"
    commit_mean_ms: float | None = None
    sync_mean_ms: float | None = None  # the durable part of a round (fdatasyncs, or COMMIT)
    sync_p99_ms: float | None = None


@dataclass
class Result:
    config: str
    nodes: int
    backend: str
    intake: Phase = field(default_factory=Phase)
    pop3: Phase = field(default_factory=Phase)
    stored: list[int] = field(default_factory=list)  # the intake mailbox's count, per node
    problems: list[str] = field(default_factory=list)  # checks that failed
    error: str | None = None  # what stopped the run of this configuration
    notes: dict[str, Any] = field(default_factory=dict)


class RoleSampler(ServiceSampler):
    """CPU by gateway process (supervisor ``main``, ``journal``, ``worker-N``, ``keyforge``):
    they live as long as the node, so a reading at each end is exact, and rare samples in
    between cost the shared CPUs nothing worth counting."""

    interval = 5.0


class Meter:
    """CPU of the nodes and of the clusters (the primary and any standby), the primary's
    counters, and the nodes' commit rounds, over a window."""

    def __init__(
        self,
        nodes: Sequence[GatewayProcess],
        token: str,
        postgres: PostgresServer | None,
        standbys: Sequence[PostgresServer] = (),
    ) -> None:
        self.nodes, self.token, self.postgres = nodes, token, postgres
        self.clusters = [*([postgres] if postgres is not None else []), *standbys]
        self.pg_stats: dict[str, float] = {}

    def _pg_numbers(self) -> dict[str, float]:
        """Transactions committed in the ``gateway`` database, the WAL position (bytes), the
        WAL's writes and syncs (their milliseconds with ``track_wal_io_timing``), and the
        database's size on disk (bytes)."""
        if self.postgres is None:
            return {}
        out = self.postgres.psql(
            "SELECT xact_commit, pg_current_wal_lsn() - '0/0'::pg_lsn, wal_write, wal_sync,"
            " wal_write_time, wal_sync_time, pg_database_size(datname)"
            " FROM pg_stat_database, pg_stat_wal WHERE datname = 'gateway'"
        )
        names = (
            "commits",
            "wal_bytes",
            "wal_writes",
            "wal_syncs",
            "wal_write_ms",
            "wal_sync_ms",
            "db_bytes",
        )
        return dict(zip(names, map(float, out.split("|")), strict=True))

    def _cpu(self) -> tuple[float, float]:
        gateway = sum(tree_cpu(node.pid) for node in self.nodes)
        masters = [pid for cluster in self.clusters if (pid := cluster.pid()) is not None]
        return gateway, sum(tree_cpu(pid) for pid in masters)

    def _rounds(self) -> dict[str, Histogram]:
        total = {ROUND_HISTOGRAM: Histogram(), SYNC_HISTOGRAM: Histogram()}
        for node in self.nodes:
            for name, histogram in commit_histograms(node, self.token).items():
                total[name] += histogram
        return total

    def __enter__(self) -> Meter:
        self._roles = [RoleSampler(node.pid).__enter__() for node in self.nodes]
        self._pg_before = self._pg_numbers()
        self._rounds_before = self._rounds()
        self._cpu_before = self._cpu()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for sampler in self._roles:
            sampler.__exit__()
        if kind is not None:
            return  # nothing to measure: the error goes on
        self.cpu = tuple(b - a for a, b in zip(self._cpu_before, self._cpu(), strict=True))
        self.by_role = {
            f"node{k + 1} {role}": seconds
            for k, sampler in enumerate(self._roles)
            for role, seconds in sampler.by_service().items()
        }
        self.rounds = {
            name: histogram - self._rounds_before[name]
            for name, histogram in self._rounds().items()
        }
        after = self._pg_numbers()
        self.pg_stats = {key: after[key] - self._pg_before[key] for key in after}

    def phase(self, messages: int, seconds: float) -> Phase:
        gateway, postgres = self.cpu
        rounds, syncs = self.rounds[ROUND_HISTOGRAM], self.rounds[SYNC_HISTOGRAM]
        return Phase(
            messages=messages,
            seconds=round(seconds, 3),
            messages_per_s=round(messages / seconds, 1),
            gateway_cpu_s=round(gateway, 2),
            gateway_cpu_ms_per_msg=round(1000 * gateway / messages, 3),
            postgres_cpu_s=round(postgres, 2),
            postgres_cpu_ms_per_msg=round(1000 * postgres / messages, 3),
            commit_rounds=int(rounds.count),
            messages_per_round=round(messages / rounds.count, 2) if rounds.count else 0.0,
            commit_p99_ms=round(1000 * rounds.quantile(0.99), 2) if rounds.count else None,
            commit_p99_bucket_ms=rounds.bucket(0.99),
            commit_mean_ms=round(1000 * rounds.total / rounds.count, 2) if rounds.count else None,
            sync_mean_ms=round(1000 * syncs.total / syncs.count, 2) if syncs.count else None,
            sync_p99_ms=round(1000 * syncs.quantile(0.99), 2) if syncs.count else None,
        )

    def notes(self, messages: int) -> dict[str, Any]:
        """Per message: the gateway's CPU by process; PostgreSQL's commits, WAL bytes and
        WAL syncs (and a sync's mean time, with ``track_wal_io_timing``)."""
        notes: dict[str, Any] = {
            "gateway_ms_per_msg_by_process": {
                role: round(1000 * seconds / messages, 3) for role, seconds in self.by_role.items()
            }
        }
        stats = self.pg_stats
        if not stats:
            return notes
        notes |= {
            "pg_commits_per_msg": round(stats["commits"] / messages, 2),
            "pg_wal_bytes_per_msg": round(stats["wal_bytes"] / messages),
            "pg_wal_syncs_per_msg": round(stats["wal_syncs"] / messages, 3),
            # What the database grew by (a retrieval's expunge frees nothing until vacuum).
            "pg_db_bytes_per_msg": round(stats["db_bytes"] / messages),
        }
        if stats["wal_syncs"] and stats["wal_sync_ms"]:  # track_wal_io_timing
            notes["pg_wal_sync_ms_mean"] = round(stats["wal_sync_ms"] / stats["wal_syncs"], 3)
        return notes


def free_port_on(addresses: Sequence[str]) -> int:
    """A TCP port nothing listens on at any of ``addresses`` right now."""
    for _ in range(50):
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket() as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        return port
    raise SystemExit(f"no port free on every one of {', '.join(addresses)}")


def halves(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` shares as even as they go, the larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def intake(nodes: Sequence[GatewayProcess], recipient: str, args: argparse.Namespace) -> float:
    """smtp-source into every node at once, the messages and sessions shared out: wall
    seconds until the last run is done."""
    shares = zip(
        nodes, halves(args.messages, len(nodes)), halves(args.sessions, len(nodes)), strict=True
    )
    with ThreadPoolExecutor(len(nodes)) as pool:
        started = time.perf_counter()
        runs = [
            pool.submit(
                smtp_source,
                node.ports["smtp"],
                messages,
                sessions,
                args.size,
                recipient,
                host=node.address,
            )
            for node, messages, sessions in shares
        ]
        for run in runs:
            run.result()
        return time.perf_counter() - started


def retrieve(
    nodes: Sequence[GatewayProcess],
    accounts: Sequence[tuple[str, str]],
    layout: list[list[int]],
    corpus: Corpus,
    meter: Meter,
) -> float:
    """One POP3S session per mailbox at once (mailbox m through node m mod nodes): wall
    seconds from all ready to connect to the last QUIT answered, metered."""
    check = gateway_check(corpus)
    contexts = [ssl.create_default_context(cafile=str(node.cert_file)) for node in nodes]
    ready = threading.Barrier(len(layout) + 1, timeout=TIMEOUT)

    def one(m: int) -> int:
        k = m % len(nodes)
        ready.wait()
        session = retrieve_all(
            nodes[k].address, nodes[k].ports["pop3s"], contexts[k], *accounts[m], layout[m], check
        )
        return session.messages

    with ThreadPoolExecutor(len(layout)) as pool:
        sessions = [pool.submit(one, m) for m in range(len(layout))]
        with meter:
            ready.wait()
            started = time.perf_counter()
            received = sum(session.result() for session in sessions)
            seconds = time.perf_counter() - started
    if received != sum(map(len, layout)):
        raise SystemExit(f"{received} messages retrieved of {sum(map(len, layout))}")
    return seconds


def run_config(
    name: str, folder: Path, args: argparse.Namespace, corpus: Corpus, result: Result
) -> None:
    """Run one configuration into ``result`` (filled as it goes, so a failure keeps what was
    measured before it)."""
    count, intake_nodes, standby = CONFIGS[name]
    settings = (
        FAST_KDF_SETTINGS
        + f"[smtp]\nmax_sessions_per_client = {max(50, args.sessions)}\n"
        + f"[pop3]\nmax_sessions_per_client = {max(20, args.mailboxes + 1)}\n"
        + workers_setting(args.workers)
    )
    with ExitStack() as stack:
        postgres = None
        standbys: list[PostgresServer] = []
        if count:
            pg_settings = dict(PG_SETTINGS)
            if args.pg_statements:
                pg_settings["shared_preload_libraries"] = "pg_stat_statements"
                pg_settings["track_wal_io_timing"] = "on"
            postgres = stack.enter_context(private_postgres(folder, settings=pg_settings))
            if standby:
                standbys.append(stack.enter_context(with_standby(postgres, folder)))
            if args.pg_statements:
                postgres.psql("CREATE EXTENSION pg_stat_statements")
            store = f'[store]\nbackend = "postgresql"\ndsn = {json.dumps(postgres.dsn)}\n'
            settings = store + 'node = "{node}"\n' + settings
        profile = args.profile_gateway
        if profile is not None:
            profile = profile.resolve().with_name(f"{profile.stem}.{name}{profile.suffix}")
        for k in range(max(1, count)):
            (folder / f"node{k + 1}").mkdir()
        # The nodes listen on the same ports, each on its own address.
        ports = {listener: free_port_on(NODE_ADDRESSES[: max(1, count)]) for listener in LISTENERS}
        first = stack.enter_context(
            gateway_process(
                folder / "node1",
                LISTENERS,
                settings.replace("{node}", "node1"),
                profile=profile,
                ports=ports,
            )
        )
        token = str(first.admin("token", "create", "fleet-bench")["token"])
        intake_id, _ = create_mailbox(first, "intake")
        accounts = [create_mailbox(first, f"pop{m}") for m in range(args.mailboxes)]
        nodes = [first]
        for k in range(1, count):
            node = stack.enter_context(
                gateway_process(
                    folder / f"node{k + 1}",
                    LISTENERS,
                    settings.replace("{node}", f"node{k + 1}"),
                    address=NODE_ADDRESSES[k],
                    ports=ports,
                )
            )
            # Its admin commands log in with the token node 1 made (the control log has it).
            nodes.append(dataclasses.replace(node, env={**node.env, "GATEWAY_TOKEN": token}))
        time.sleep(1)  # let the key forges fill their pools, as on servers that have been running

        print(f"  intake: {args.messages} x {args.size} octets ...", file=sys.stderr, flush=True)
        if args.pg_statements and postgres is not None:
            postgres.psql("SELECT pg_stat_statements_reset()")
        with Meter(nodes, token, postgres, standbys) as meter:
            seconds = intake(nodes[:intake_nodes], f"mbx-{intake_id}@localhost", args)
        result.intake = meter.phase(args.messages, seconds)
        result.notes |= {f"intake_{k}": v for k, v in meter.notes(args.messages).items()}
        if args.pg_statements and postgres is not None:
            result.notes["intake_statements"] = top_statements(postgres, args.pg_statements)
        result.stored = [mailbox_counts(node).get(intake_id, (0, 0))[0] for node in nodes]
        for node, stored in zip(nodes, result.stored, strict=True):
            if stored != args.messages:
                result.problems.append(
                    f"the node on {node.address} holds {stored} intake messages of {args.messages}"
                )

        layout = spread(args.pop3_messages, args.mailboxes)
        print(
            f"  POP3S: {args.pop3_messages} x {args.pop3_size} octets, filling ...",
            file=sys.stderr,
            flush=True,
        )
        fill_all(first.ports["smtp"], accounts, layout, corpus)
        print("  POP3S: retrieving ...", file=sys.stderr, flush=True)
        if args.pg_statements and postgres is not None:
            postgres.psql("SELECT pg_stat_statements_reset()")
        with Meter(nodes, token, postgres, standbys) as meter:
            seconds = retrieve(nodes, accounts, layout, corpus, meter)
        result.pop3 = meter.phase(args.pop3_messages, seconds)
        result.notes |= {f"pop3_{k}": v for k, v in meter.notes(args.pop3_messages).items()}
        if args.pg_statements and postgres is not None:
            result.notes["pop3_statements"] = top_statements(postgres, args.pg_statements)
        for node in nodes:
            left = [left_after_quit(node, *account, result) for account in accounts]
            if any(left):
                result.problems.append(f"the node on {node.address} still has {left} messages")


def left_after_quit(node: GatewayProcess, user: str, password: str, result: Result) -> int:
    """How many messages a mailbox holds, asked of ``node`` right after the retrieval: a
    login refused with ``[IN-USE]`` (the maildrop lock not yet released after the QUIT was
    answered) is tried again, for up to IN_USE_WAIT seconds, and the wait noted."""
    context = ssl.create_default_context(cafile=str(node.cert_file))
    started = time.perf_counter()
    refused = False
    while True:
        try:
            left = count_left(node.address, node.ports["pop3s"], context, user, password)
        except ProtocolError as exc:
            if "[IN-USE]" not in str(exc) or time.perf_counter() - started > IN_USE_WAIT:
                raise
            refused = True
            time.sleep(0.02)
            continue
        if refused:
            waited = round(time.perf_counter() - started, 3)
            result.notes["in_use_after_quit_s"] = max(
                waited, result.notes.get("in_use_after_quit_s", 0.0)
            )
        return left


def top_statements(postgres: PostgresServer, limit: int) -> list[dict[str, Any]]:
    """The statements that took the most time since the last reset (pg_stat_statements)."""
    out = postgres.psql(
        "SELECT calls, round(total_exec_time::numeric, 1), round(mean_exec_time::numeric, 3),"
        " rows, wal_bytes, regexp_replace(left(query, 160), '\\s+', ' ', 'g')"
        " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database"
        " WHERE datname = 'gateway') ORDER BY total_exec_time DESC LIMIT " + str(int(limit))
    )
    rows = []
    for line in out.splitlines():
        calls, total, mean, count, wal, query = line.split("|", 5)
        rows.append(
            {
                "calls": int(calls),
                "total_ms": float(total),
                "mean_ms": float(mean),
                "rows": int(count),
                "wal_bytes": int(wal),
                "query": query,
            }
        )
    return rows


# -- report --------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(results: list[Result], args: argparse.Namespace) -> str:
    lines = []
    titles = {
        "intake": f"intake: {args.messages} x {args.size} octets, {args.sessions} sessions",
        "pop3": f"POP3S retrieval: {args.pop3_messages} x {args.pop3_size} octets, "
        f"{args.mailboxes} sessions",
    }
    for key, title in titles.items():
        lines.append(title)
        lines.append(
            f"{'config':<9}{'nodes':>6}{'seconds':>9}{'msgs/s':>9}{'gw ms/msg':>11}"
            f"{'pg ms/msg':>11}{'rounds':>8}{'msg/round':>10}{'p99 ms':>8}{'(bucket)':>11}"
            f"{'mean ms':>9}{'sync ms':>9}"
        )
        for r in results:
            p = r.intake if key == "intake" else r.pop3
            if not p.messages:
                continue
            lines.append(
                f"{r.config:<9}{r.nodes:>6}{p.seconds:>9.2f}{p.messages_per_s:>9.1f}"
                f"{p.gateway_cpu_ms_per_msg:>11.3f}{p.postgres_cpu_ms_per_msg:>11.3f}"
                f"{p.commit_rounds:>8}{p.messages_per_round:>10.2f}{_ms(p.commit_p99_ms):>8}"
                f"{p.commit_p99_bucket_ms:>11}{_ms(p.commit_mean_ms):>9}{_ms(p.sync_mean_ms):>9}"
            )
        lines.append("")
    for r in results:
        if r.stored:
            lines.append(f"{r.config}: intake messages each node holds: {r.stored}")
        for problem in r.problems:
            lines.append(f"{r.config}: CHECK FAILED: {problem}")
        if r.error:
            lines.append(f"{r.config}: FAILED: {r.error}")
        notes = {k: v for k, v in r.notes.items() if not k.endswith("_statements")}
        if notes:
            lines.append(f"{r.config}: " + ", ".join(f"{k} {v}" for k, v in notes.items()))
        for phase in ("intake", "pop3"):
            if f"{phase}_statements" in r.notes:
                lines.append(f"{r.config}: {phase}: the statements that took most time")
            for row in r.notes.get(f"{phase}_statements", []):
                lines.append(
                    f"  {row['calls']:>8} calls {row['total_ms']:>10.1f} ms "
                    f"{row['mean_ms']:>8.3f} ms/call {row['rows']:>8} rows "
                    f"{row['wal_bytes'] / MIB:>8.1f} MiB WAL  {row['query']}"
                )
    rates = {r.config: r.intake.messages_per_s for r in results if r.intake.messages}
    if "local" in rates and "fleet-1" in rates:
        ratio = rates["fleet-1"] / rates["local"]
        lines.append(
            f"fleet-1 / local intake: {ratio:.2f}x messages/s (target {TARGET}x: "
            f"{'met' if ratio >= TARGET else 'missed'})"
        )
    if "fleet-2" in rates:
        lines.append(
            "fleet-2 intake: "
            + ", ".join(f"{rates['fleet-2'] / rates[n]:.2f}x {n}" for n in rates if n != "fleet-2")
        )
    if "fleet-1" in rates and "fleet-1-sync" in rates:
        lines.append(
            f"fleet-1-sync / fleet-1 intake: {rates['fleet-1-sync'] / rates['fleet-1']:.2f}x "
            "(a synchronous standby on the same machine)"
        )
    for r in results:
        by_process = r.notes.get("intake_gateway_ms_per_msg_by_process", {})
        if r.config == "fleet-2-follow" and "node2 journal" in by_process:
            lines.append(
                f"following another node's intake: {by_process['node2 journal']:.3f} ms of "
                "node 2's journal per message"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="SMTP intake and POP3S retrieval through one and two gateway nodes on the "
        "fleet store (PostgreSQL), next to the local store: rates, CPU per message of the "
        "gateway and of PostgreSQL, p99 of the group commit's rounds."
    )
    parser.add_argument("--messages", type=int, default=20_000, help="intake messages")
    parser.add_argument("--sessions", type=int, default=20, help="smtp-source sessions in all")
    parser.add_argument("--size", type=int, default=10 * KIB, help="intake payload octets")
    parser.add_argument("--pop3-messages", type=int, default=2000, help="messages retrieved")
    parser.add_argument("--pop3-size", type=int, default=50 * KIB, help="octets per message")
    parser.add_argument(
        "--mailboxes", type=int, default=4, help="retrieval mailboxes, one POP3S session each"
    )
    parser.add_argument(
        "--only",
        action="append",
        help=f"configurations to run, comma-separated or repeated ({', '.join(CONFIGS)}; "
        f"default: {', '.join(DEFAULT_CONFIGS)})",
    )
    parser.add_argument(
        "--workers", type=int, help="protocol workers per node (default: the gateway's own)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="folder for the data (/tmp)")
    parser.add_argument(
        "--profile-gateway",
        type=Path,
        help="run node 1 under cProfile, stats to this file (its trio thread; with --workers "
        "0 that is the whole gateway but its worker threads)",
    )
    parser.add_argument(
        "--pg-statements",
        type=int,
        default=0,
        metavar="N",
        help="load pg_stat_statements and report the N statements that took most time "
        "in each phase",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (the table to stderr)")
    args = parser.parse_args(argv)
    asked = [n for each in args.only or [] for n in each.split(",") if n]
    args.only = asked or list(DEFAULT_CONFIGS)
    unknown = set(args.only) - set(CONFIGS)
    if unknown:
        parser.error(f"--only: unknown configurations {sorted(unknown)}")
    if args.sessions < 2 or args.messages < args.sessions:
        parser.error("--sessions must be at least 2 and at most --messages")
    if args.mailboxes < 2 or args.pop3_messages < args.mailboxes:
        parser.error("--mailboxes must be at least 2 and at most --pop3-messages")
    return args


class Interrupted(BaseException):
    """SIGTERM: unwinds every context (servers stopped, folders removed), then exits."""


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        return run(args)
    except Interrupted:
        print("interrupted: servers stopped, data removed", file=sys.stderr)
        return 128 + signal.SIGTERM


def run(args: argparse.Namespace) -> int:
    corpus = Corpus(args.pop3_size)
    results = []
    with tempfile.TemporaryDirectory(prefix="fleet_bench-", dir=args.dir) as temp:
        for name in (n for n in CONFIGS if n in args.only):
            folder = Path(temp) / name
            folder.mkdir()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            count = CONFIGS[name][0]
            result = Result(name, max(1, count), "postgresql" if count else "local")
            try:
                run_config(name, folder, args, corpus, result)
            except (Exception, SystemExit) as exc:  # reported; the next configuration runs
                result.error = f"{type(exc).__name__}: {str(exc)[-2000:]}"
                traceback.print_exc()
                for log in sorted(folder.glob("node*/gateway.log")):
                    tail = log.read_text(errors="replace")[-3000:]
                    print(f"--- {log.parent.name}'s log, its end ---\n{tail}", file=sys.stderr)
            results.append(result)
    table = render(results, args)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps([asdict(r) for r in results], indent=2, default=str))
    else:
        print(table)
    return 1 if any(r.error or r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
