"""Recording proxy benchmark: the same client sends mail to Postfix and retrieves mail from
Dovecot, once straight and once through the gateway's recording proxies (SPEC.md 15.3, 15.4),
in one run; the difference is the proxy hop.

Theory of operation
-------------------
Per protocol, a direct scenario, then one proxy scenario per ``--workers N`` (labelled
``w=N``; without ``--workers``, the gateway's default, one worker per CPU it starts with),
each with a fresh ``python -m gateway serve`` (``[server] workers = N``) with an
implicit-TLS SMTP listener (``smtps``), a POP3S listener and the admin listener; ``[proxy]
allow`` admits loopback and ``ca_files`` trusts the CA the peers' certificates come from.
Its mailboxes (one per client session) are made with ``gateway mailbox create --json`` (the
admin API). Each scenario gets fresh peers, all on 127.0.0.2 with certificates from that CA.

Pinning (``--pin``, on by default with two CPUs or more): this process pins itself (every
client thread) to the second CPU it may use before anything starts, so the peers it starts
inherit it, and pins each peer's tree there again after it starts (``taskset -a -p -c``
on every process); the gateway starts under ``taskset -c`` with all of this process's
original CPUs (so ``workers = "auto"`` counts them all) and its whole tree (supervisor,
journal, workers) is moved to the first CPU once it serves. Direct: client and provider
share one CPU; proxy: the same, and the gateway has a CPU of its own. Each scenario records
the CPUs every tree's threads may use, before and after its window (they must not change).

``smtp-direct`` / ``smtp-proxy``
    A private Postfix submission server with SASL through Dovecot
    (tests/peers/submission.py), ``deliver="discard"``. ``--sessions`` threads each open
    ``smtplib.SMTP_SSL``, log in once and ``sendmail`` their share of the messages (dealt in
    turn), then QUIT: straight to Postfix's ``smtps_port``, or to the gateway's ``smtps``
    listener as ``bench<k>%127.0.0.2:<smtps_port>%<mailbox id>`` (the proxy then uses
    implicit TLS upstream). A message's latency is the ``sendmail`` call: MAIL, RCPT, DATA,
    the content and the final reply, which through the proxy comes only once Postfix
    accepted and the archive copy is durable.
``pop3-direct`` / ``pop3-proxy``
    A private Dovecot (tests/peers/dovecot.py), one user per session, the messages written
    into the users' Maildirs beforehand (not measured). Each session: USER/PASS, STAT, then
    RETR and DELE for every message, then QUIT: straight to Dovecot's ``pop3s_port``, or to
    the gateway's POP3S listener as ``bench<k>%127.0.0.2:<pop3s_port>%<mailbox id>``, where
    each RETR also asks UIDL upstream and stores the message before its terminating dot. A
    message's latency is the RETR round trip: the command sent until the terminating dot is
    read.

Numbers. Wall time runs from the moment every session thread is ready to connect until the
last QUIT is answered (TLS handshakes and logins included). Messages/s is messages over wall
time; MB/s decimal megabytes of message octets. Latencies are per message, over all sessions;
"added" is the proxy scenario's median (p99) minus the direct scenario's. CPU seconds are
those of each process tree over the same window, read from /proc as tools/bench/_common.py
explains: the gateway (supervisor, journal, workers; with ``--workers 0`` one process and its
key forge child), the peers (Postfix's master and the submission server's Dovecot, or the
POP3 Dovecot), and this process (the client). The gateway's memory: the sum of VmRSS over
its tree just before the window (idle, its mailboxes made) and the largest such sum sampled
every 50 ms in the window (peak).

Checks, after each window (so they cost it nothing): every session's replies were positive
and every RETR gave the stored octets (SHA-256 per message, against the message and, for the
proxy, against what Dovecot served directly); Postfix logged exactly one ``status=sent`` per
message; Dovecot's Maildirs are empty; the gateway's mailboxes grew by exactly the messages
and octets relayed (``gateway mailbox list --json``); and the first and last copy of one
mailbox, retrieved from the gateway with the mailbox password, are the messages sent.

Run ``python tools/bench/proxy_bench.py --help``; tools/bench/README.md explains each number.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import smtplib
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trustme
from _common import (
    KIB,
    MB,
    TIMEOUT,
    Corpus,
    GatewayProcess,
    ProtocolError,
    ServiceSampler,
    Session,
    cpu_list,
    create_mailbox,
    describe_affinity,
    gateway_process,
    mailbox_counts,
    own_cpu,
    percentile,
    pin,
    settle,
    spread,
    tree_cpu,
    tree_memory,
    tree_rss,
    tree_system_cpu,
    workers_setting,
)

from tests.peers.dovecot import DovecotInstance, private_dovecot
from tests.peers.submission import SubmissionInstance, private_submission

TARGET_RATIO = 0.70  # the target: a proxy keeps at least 70 % of the direct rate
TARGET_ADDED_P99_MS = 5.0  # ... and adds less than 5 ms to the p99 latency
MIB = 1024 * KIB
SENDER = "sender@example.com"
RECIPIENT = "archive@example.net"
READY_TIMEOUT = 60.0  # seconds the session threads wait for each other
DRAIN_TIMEOUT = 120.0  # seconds Postfix gets to log every message as sent
# The two parts of a message's latency, as the notes name them.
PHASES = {"smtp": ("mail_rcpt", "data_to_reply"), "pop3": ("retr_to_status", "status_to_end")}
DOVECOT_TRANSIENT = ("/pop3", "/pop3-login")  # per-session processes, reaped after QUIT


# -- one client session --------------------------------------------------------------------


@dataclass
class SessionResult:
    messages: int = 0
    octets: int = 0
    login_s: float = 0.0
    tls: str = ""
    latencies: list[float] = field(default_factory=list)  # seconds, per message
    # The same in two parts: SMTP MAIL + RCPT, then DATA to the final reply; POP3 RETR to
    # its status line, then the rest of the response.
    phases: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    digests: dict[int, bytes] = field(default_factory=dict)  # POP3: message n -> SHA-256


@dataclass(frozen=True)
class Endpoint:
    """Where the client sessions go and as whom: one (user, password) per session."""

    host: str
    port: int
    context: ssl.SSLContext
    logins: list[tuple[str, str]]


def nodelay(sock: socket.socket) -> None:
    """No Nagle: otherwise the last TLS record of a message's content (a write smaller than
    a segment, with data still unacknowledged) waits for the server's delayed ACK, about
    40 ms per message on loopback. trio sets TCP_NODELAY on every socket the gateway uses."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def smtp_session(
    endpoint: Endpoint, index: int, numbers: list[int], corpus: Corpus, ready: threading.Barrier
) -> SessionResult:
    user, password = endpoint.logins[index]
    ready.wait(READY_TIMEOUT)
    result = SessionResult()
    started = time.perf_counter()
    client = smtplib.SMTP_SSL(
        endpoint.host, endpoint.port, context=endpoint.context, timeout=TIMEOUT
    )
    try:
        assert isinstance(client.sock, ssl.SSLSocket)
        nodelay(client.sock)
        client.login(user, password)
        result.login_s = time.perf_counter() - started
        result.tls = f"{client.sock.version()} {(client.sock.cipher() or ('',))[0]}"
        size = client.has_extn("size")
        for n in numbers:
            message = corpus.message(n)
            options = [f"size={len(message)}"] if size else []
            # What sendmail() does (the session already said EHLO), a phase at a time.
            begun = time.perf_counter()
            code, text = client.mail(SENDER, options)
            if code == 250:
                code, text = client.rcpt(RECIPIENT)
            enveloped = time.perf_counter()
            if code in (250, 251):
                code, text = client.data(message)
            ended = time.perf_counter()
            if code != 250:
                raise ProtocolError(f"message {n}: {code} {text!r}")
            result.latencies.append(ended - begun)
            result.phases[0].append(enveloped - begun)
            result.phases[1].append(ended - enveloped)
            result.messages += 1
            result.octets += len(message)
        code, text = client.quit()
        if code != 221:
            raise ProtocolError(f"QUIT: {code} {text!r}")
    finally:
        client.close()
    return result


def pop3_session(
    endpoint: Endpoint, index: int, numbers: list[int], ready: threading.Barrier
) -> SessionResult:
    user, password = endpoint.logins[index]
    ready.wait(READY_TIMEOUT)
    result = SessionResult()
    started = time.perf_counter()
    session = Session(endpoint.host, endpoint.port, endpoint.context)
    try:
        nodelay(session.sock)
        result.tls = session.tls()
        session.login(user, password)
        result.login_s = time.perf_counter() - started
        count = int(session.command("STAT").split()[1])
        if count != len(numbers):
            raise ProtocolError(f"session {index}: STAT says {count}, {len(numbers)} were stored")
        for number, n in enumerate(numbers, 1):
            begun = time.perf_counter()
            session.command(f"RETR {number}")
            status = time.perf_counter()
            message = session.multiline()
            ended = time.perf_counter()
            result.latencies.append(ended - begun)
            result.phases[0].append(status - begun)
            result.phases[1].append(ended - status)
            result.digests[n] = hashlib.sha256(message).digest()
            result.messages += 1
            result.octets += len(message)
            session.command(f"DELE {number}")
        session.command("QUIT")
    finally:
        session.close()
    return result


# -- CPUs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pinning:
    """Who runs on which CPUs. ``start``: this process's CPUs when it began, which the
    gateway starts with (``[server] workers = "auto"`` counts them); with pinning on, the
    gateway's whole tree is then moved to ``gateway`` and this process (every client thread)
    and the peers to ``others``."""

    start: frozenset[int]
    gateway: frozenset[int] | None = None
    others: frozenset[int] | None = None

    @property
    def on(self) -> bool:
        return self.gateway is not None

    def describe(self) -> str:
        if self.gateway is None or self.others is None:
            return f"pinning: off (client, gateway and peers share CPUs {cpu_list(self.start)})"
        return (
            f"pinning (taskset): the gateway's tree (supervisor, journal, workers) on CPU "
            f"{cpu_list(self.gateway)}; the client (this process) and the peers (Postfix and "
            f"its Dovecot, or Dovecot) on CPU {cpu_list(self.others)}, in the direct scenarios "
            "as in the proxy ones"
        )


def decide_pinning(wanted: bool | None) -> Pinning:
    """``--pin``: None (on with two CPUs or more), True or False. Pins this process."""
    start = frozenset(os.sched_getaffinity(0))
    if wanted is None:
        wanted = len(start) >= 2
    if not wanted:
        return Pinning(start)
    if len(start) < 2:
        raise SystemExit("--pin needs at least two CPUs")
    first, second = sorted(start)[:2]
    pinning = Pinning(start, frozenset({first}), frozenset({second}))
    assert pinning.others is not None
    pin(os.getpid(), pinning.others, tree=False)  # threads started later inherit it
    return pinning


# -- one measured window -------------------------------------------------------------------


@dataclass
class Result:
    scenario: str  # smtp-direct, smtp-proxy w=N, pop3-direct, pop3-proxy w=N
    messages: int
    size: int
    sessions: int
    workers: int | None = None  # the gateway's protocol workers (proxy scenarios)
    seconds: float = 0.0
    messages_per_s: float = 0.0
    mb_per_s: float = 0.0
    octets: int = 0  # message octets sent (SMTP) or received (POP3) by the client
    latency_ms_median: float = 0.0
    latency_ms_p99: float = 0.0
    latency_ms_mean: float = 0.0
    latency_ms_max: float = 0.0
    added_ms_median: float | None = None  # proxy: its median minus the direct median
    added_ms_p99: float | None = None  # proxy: its p99 minus the direct p99
    rate_ratio: float | None = None  # proxy: its messages/s over the direct messages/s
    gateway_cpu_s: float | None = None  # None: no gateway ran (direct)
    gateway_cpu_ms_per_msg: float | None = None
    gateway_rss_idle_mib: float | None = None  # sum of VmRSS over its tree before the window
    gateway_rss_peak_mib: float | None = None  # the largest such sum sampled in the window
    peer_cpu_s: float = 0.0
    peer_cpu_ms_per_msg: float = 0.0
    client_cpu_s: float = 0.0
    client_cpu_ms_per_msg: float = 0.0
    login_ms_mean: float = 0.0
    login_ms_max: float = 0.0
    tls: str = ""
    cpus: dict[str, str] = field(default_factory=dict)  # tree -> CPUs its threads may use
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return self.scenario.split("-")[0]


Run = Callable[[int, threading.Barrier], SessionResult]


@contextmanager
def samplers(roots: dict[str, int]) -> Iterator[dict[str, ServiceSampler]]:
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(ServiceSampler(pid, rss=name == "gateway"))
            for name, pid in roots.items()
        }


def affinities(roots: dict[str, int]) -> dict[str, str]:
    """The CPUs each tree's threads (and this process's, ``client``) may run on."""
    cpus = {name: describe_affinity(pid) for name, pid in roots.items()}
    return cpus | {"client": describe_affinity(os.getpid(), tree=False)}


def measure(
    scenario: str,
    args: argparse.Namespace,
    run: Run,
    gateway: GatewayProcess | None,
    peers: dict[str, int],
    pinning: Pinning,
) -> tuple[Result, list[SessionResult]]:
    """Run ``args.sessions`` sessions at once (``run(index, barrier)`` each, in threads) and
    measure the window. ``peers``: name -> root pid of each peer's process tree, pinned to
    ``pinning.others`` first; ``gateway``: None in the direct scenarios."""
    if pinning.others is not None:
        for pid in peers.values():
            pin(pid, pinning.others)
    sessions = args.sessions
    ready = threading.Barrier(sessions + 1)
    roots = ({"gateway": gateway.pid} if gateway else {}) | peers
    result = Result(scenario, args.messages, args.size, sessions)
    if gateway is not None:
        result.workers = gateway.workers()
        result.gateway_rss_idle_mib = tree_rss(gateway.pid) / MIB
    cpus_before = affinities(roots)
    result.notes["load_average_1min_before"] = round(os.getloadavg()[0], 2)
    with ThreadPoolExecutor(sessions) as pool, samplers(roots) as sampled:
        futures = [pool.submit(run, index, ready) for index in range(sessions)]
        cpu_before = {name: tree_cpu(pid) for name, pid in roots.items()}
        sys_before = {name: tree_system_cpu(pid) for name, pid in roots.items()}
        client_before = own_cpu()
        ready.wait(READY_TIMEOUT)
        started = time.perf_counter()
        try:
            done = [future.result() for future in futures]
        except (OSError, smtplib.SMTPException, ProtocolError) as exc:
            raise SystemExit(f"{scenario}: a session failed: {exc!r}") from exc
        result.seconds = time.perf_counter() - started
        client_after = own_cpu()
        result.cpus = affinities(roots)  # the processes started in the window too
        for pid in peers.values():
            settle(pid, DOVECOT_TRANSIENT)
        cpu_after = {name: tree_cpu(pid) for name, pid in roots.items()}
        sys_after = {name: tree_system_cpu(pid) for name, pid in roots.items()}
    if result.cpus != cpus_before:
        raise SystemExit(f"{scenario}: CPUs changed in the window: {cpus_before} -> {result.cpus}")
    received = sum(s.messages for s in done)
    if received != args.messages:
        raise SystemExit(f"{scenario}: {received} messages of {args.messages}")
    result.octets = sum(s.octets for s in done)
    result.messages_per_s = received / result.seconds
    result.mb_per_s = result.octets / MB / result.seconds
    latencies = sorted(x * 1000 for s in done for x in s.latencies)
    result.latency_ms_median = statistics.median(latencies)
    result.latency_ms_p99 = percentile(latencies, 0.99)
    result.latency_ms_mean = statistics.fmean(latencies)
    result.latency_ms_max = latencies[-1]
    names = PHASES[result.protocol]
    for i, name in enumerate(names):
        phase = sorted(x * 1000 for s in done for x in s.phases[i])
        result.notes[f"{name}_ms_median"] = round(statistics.median(phase), 3)
        result.notes[f"{name}_ms_p99"] = round(percentile(phase, 0.99), 3)
    used = {name: cpu_after[name] - cpu_before[name] for name in roots}
    if gateway is not None:
        result.gateway_cpu_s = used["gateway"]
        result.gateway_cpu_ms_per_msg = used["gateway"] * 1000 / received
        result.gateway_rss_peak_mib = sampled["gateway"].rss_peak / MIB
        result.notes["gateway_vmhwm_sum_mib"] = round(
            sum(m.hwm for m in tree_memory(gateway.pid)) / MIB, 1
        )
    result.peer_cpu_s = sum(used[name] for name in peers)
    result.peer_cpu_ms_per_msg = result.peer_cpu_s * 1000 / received
    result.client_cpu_s = client_after - client_before
    result.client_cpu_ms_per_msg = result.client_cpu_s * 1000 / received
    logins = [s.login_s * 1000 for s in done]
    result.login_ms_mean = statistics.fmean(logins)
    result.login_ms_max = max(logins)
    result.tls = done[0].tls
    result.notes["cpu_s_by_tree"] = {name: round(value, 2) for name, value in used.items()}
    # How busy each side kept its CPUs: CPU seconds over wall seconds (1.0 = one CPU).
    result.notes["cpus_busy"] = {
        "gateway": round(used.get("gateway", 0.0) / result.seconds, 2),
        "client_and_peers": round((result.client_cpu_s + result.peer_cpu_s) / result.seconds, 2),
    }
    result.notes["system_cpu_s_by_tree"] = {
        name: round(sys_after[name] - sys_before[name], 2) for name in roots
    }
    result.notes["cpu_s_by_process_sampled"] = {
        f"{tree}:{name}": value
        for tree, sampler in sampled.items()
        for name, value in sampler.by_service().items()
        if value > 0
    }
    return result, done


def compare(direct: Result, proxy: Result) -> None:
    proxy.added_ms_median = proxy.latency_ms_median - direct.latency_ms_median
    proxy.added_ms_p99 = proxy.latency_ms_p99 - direct.latency_ms_p99
    proxy.rate_ratio = proxy.messages_per_s / direct.messages_per_s


# -- the gateway's side --------------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySide:
    process: GatewayProcess
    protocol: str
    mailboxes: list[tuple[str, str]]  # (id, password), one per session

    @property
    def label(self) -> str:
        return f"w={self.process.workers()}"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.process.cert_file))

    def endpoint(self, listener: str, users: dict[str, str], host: str, port: int) -> Endpoint:
        """Proxy logins: ``user%host:port%mailbox`` with the upstream password."""
        logins = [
            (f"{user}%{host}:{port}%{mailbox_id}", password)
            for (user, password), (mailbox_id, _) in zip(users.items(), self.mailboxes, strict=True)
        ]
        return Endpoint("127.0.0.1", self.process.ports[listener], self.context(), logins)

    def counts(self) -> list[tuple[int, int]]:
        everything = mailbox_counts(self.process)
        return [everything[mailbox_id] for mailbox_id, _ in self.mailboxes]

    def check_growth(
        self,
        scenario: str,
        before: list[tuple[int, int]],
        layout: list[list[int]],
        corpus: Corpus,
    ) -> dict[str, Any]:
        """Each mailbox grew by its session's messages and octets; the first and the last
        copy of the first mailbox are the messages relayed, byte for byte."""
        after = self.counts()
        for k, ((m0, b0), (m1, b1), numbers) in enumerate(zip(before, after, layout, strict=True)):
            if (m1 - m0, b1 - b0) != (len(numbers), len(numbers) * corpus.size):
                raise SystemExit(
                    f"{scenario}: gateway mailbox {k} grew by {m1 - m0} messages and "
                    f"{b1 - b0} octets, expected {len(numbers)} and {len(numbers) * corpus.size}"
                )
        mailbox_id, password = self.mailboxes[0]
        session = Session("127.0.0.1", self.process.ports["pop3s"], self.context())
        try:
            session.line()
            session.command(f"USER {mailbox_id}")
            session.command(f"PASS {password}")
            count = int(session.command("STAT").split()[1])
            for number, n in ((before[0][0] + 1, layout[0][0]), (count, layout[0][-1])):
                session.command(f"RETR {number}")
                if session.multiline() != corpus.message(n):
                    raise SystemExit(f"{scenario}: the gateway's copy of message {n} differs")
            session.command("QUIT")
        finally:
            session.close()
        return {
            "gateway_messages_added": sum(m for m, _ in after) - sum(m for m, _ in before),
            "gateway_octets_added": sum(b for _, b in after) - sum(b for _, b in before),
        }


@contextmanager
def proxy_gateway(
    folder: Path,
    args: argparse.Namespace,
    protocol: str,
    workers: int | None,
    pinning: Pinning,
) -> Iterator[GatewaySide]:
    """A fresh ``gateway serve`` for one proxy scenario (``workers`` protocol workers, None:
    its default) with ``args.sessions`` mailboxes, its tree pinned to ``pinning.gateway``
    once every process serves; stopped when the block ends."""
    ca_file = folder / "ca.pem"
    label = "default" if workers is None else str(workers)
    home = folder / f"gateway-{protocol}-w{label}"
    home.mkdir()
    settings = (
        f"[smtp]\nmax_sessions_per_client = {max(50, args.sessions + 1)}\n"
        f"[pop3]\nmax_sessions_per_client = {max(20, args.sessions + 1)}\n"
        f'[proxy]\nallow = ["127.0.0.0/8"]\nca_files = ["{ca_file}"]\n'
    ) + workers_setting(workers)
    profile = args.profile_gateway
    if profile is not None:
        profile = profile.resolve().with_name(f"{profile.stem}.{protocol}-w{label}{profile.suffix}")
    with gateway_process(
        home,
        {"smtps": ("smtp", "implicit"), "pop3s": ("pop3", "implicit")},
        settings,
        profile=profile,
        cpus=pinning.start if pinning.on else None,
    ) as gateway:
        with ThreadPoolExecutor(4) as pool:
            made = [
                pool.submit(create_mailbox, gateway, f"{protocol}-proxy-{k}")
                for k in range(args.sessions)
            ]
            mailboxes = [future.result() for future in made]
        if pinning.gateway is not None:
            pin(gateway.pid, pinning.gateway)
        time.sleep(1)  # what the start and the mailboxes left to do (Argon2id, key forge)
        yield GatewaySide(gateway, protocol, mailboxes)


# -- SMTP: Postfix submission --------------------------------------------------------------


def postfix_roots(submission: SubmissionInstance) -> dict[str, int]:
    postfix = submission.postfix.master_pid()
    dovecot = submission.dovecot.master_pid()
    assert postfix is not None
    assert dovecot is not None
    return {"postfix": postfix, "dovecot-auth": dovecot}


def smtp_scenario(
    folder: Path,
    args: argparse.Namespace,
    corpus: Corpus,
    ca: trustme.CA,
    users: dict[str, str],
    layout: list[list[int]],
    side: GatewaySide | None,
    pinning: Pinning,
) -> Result:
    scenario = "smtp-direct" if side is None else f"smtp-proxy {side.label}"
    print(f"running {scenario} ...", file=sys.stderr, flush=True)
    name = scenario.replace(" ", "-").replace("=", "")
    with private_submission(folder, users=users, deliver="discard", ca=ca, name=name) as submission:
        if side is None:
            endpoint = Endpoint(
                submission.host,
                submission.smtps_port,
                submission.ssl_context(),
                list(users.items()),
            )
        else:
            endpoint = side.endpoint("smtps", users, submission.host, submission.smtps_port)
            before = side.counts()

        def run(index: int, ready: threading.Barrier) -> SessionResult:
            return smtp_session(endpoint, index, layout[index], corpus, ready)

        roots = postfix_roots(submission)
        gateway = side.process if side else None
        result, _ = measure(scenario, args, run, gateway, roots, pinning)
        drained = time.perf_counter()
        submission.wait_for_sent(args.messages, DRAIN_TIMEOUT)
        submission.wait_until_queue_empty(DRAIN_TIMEOUT)
        result.notes["postfix_drain_s"] = round(time.perf_counter() - drained, 2)
        sent = submission.sent_count()
        if sent != args.messages:
            raise SystemExit(f"{scenario}: Postfix logged {sent} sent, not {args.messages}")
        result.notes["postfix_sent"] = sent
        if side is not None:
            result.notes |= side.check_growth(scenario, before, layout, corpus)
    return result


# -- POP3: Dovecot -------------------------------------------------------------------------


def fill_dovecot(dovecot: DovecotInstance, layout: list[list[int]], corpus: Corpus) -> None:
    def fill(user: str, numbers: list[int]) -> None:
        for n in numbers:
            dovecot.deliver(user, corpus.message(n))

    with ThreadPoolExecutor(len(layout)) as pool:
        for future in [
            pool.submit(fill, u, ns) for u, ns in zip(dovecot.users, layout, strict=True)
        ]:
            future.result()


def pop3_scenario(
    folder: Path,
    args: argparse.Namespace,
    corpus: Corpus,
    ca: trustme.CA,
    users: dict[str, str],
    layout: list[list[int]],
    side: GatewaySide | None,
    pinning: Pinning,
    served: dict[int, bytes],
) -> Result:
    """``served``: message n -> SHA-256 of what Dovecot served directly (filled by the
    direct scenario, checked against by the proxy ones)."""
    scenario = "pop3-direct" if side is None else f"pop3-proxy {side.label}"
    print(f"running {scenario} ...", file=sys.stderr, flush=True)
    expected = {n: hashlib.sha256(corpus.message(n)).digest() for n in range(args.messages)}
    name = scenario.replace(" ", "-").replace("=", "")
    with private_dovecot(folder, users=users, ca=ca, name=name) as dovecot:
        fill_dovecot(dovecot, layout, corpus)
        if side is None:
            endpoint = Endpoint(
                dovecot.host,
                dovecot.pop3s_port,
                ssl.create_default_context(cafile=str(dovecot.ca_file)),
                list(users.items()),
            )
        else:
            endpoint = side.endpoint("pop3s", users, dovecot.host, dovecot.pop3s_port)
            before = side.counts()

        def run(index: int, ready: threading.Barrier) -> SessionResult:
            return pop3_session(endpoint, index, layout[index], ready)

        master = dovecot.master_pid()
        assert master is not None
        gateway = side.process if side else None
        result, done = measure(scenario, args, run, gateway, {"dovecot": master}, pinning)
        digests = {n: digest for s in done for n, digest in s.digests.items()}
        wrong = sorted(n for n, digest in digests.items() if digest != expected[n])
        if wrong:
            raise SystemExit(f"{scenario}: messages {wrong[:10]} differ from those stored")
        if served and digests != served:
            raise SystemExit(f"{scenario}: not the octets Dovecot served directly")
        served |= digests
        if any(dovecot.stored(user) for user in users):
            raise SystemExit(f"{scenario}: files left in the Maildirs after QUIT")
        if side is not None:
            result.notes |= side.check_growth(scenario, before, layout, corpus)
    return result


def run_protocol(
    protocol: str,
    folder: Path,
    args: argparse.Namespace,
    corpus: Corpus,
    ca: trustme.CA,
    pinning: Pinning,
) -> list[Result]:
    """The direct scenario, then one proxy scenario per ``--workers`` (a fresh gateway
    each), each compared with the direct one."""
    layout = spread(args.messages, args.sessions)
    users = {f"bench{k}": secrets.token_urlsafe(12) for k in range(args.sessions)}
    served: dict[int, bytes] = {}

    def scenario(side: GatewaySide | None) -> Result:
        if protocol == "smtp":
            return smtp_scenario(folder, args, corpus, ca, users, layout, side, pinning)
        return pop3_scenario(folder, args, corpus, ca, users, layout, side, pinning, served)

    direct = scenario(None)
    results = [direct]
    for workers in args.workers or [None]:
        with proxy_gateway(folder, args, protocol, workers, pinning) as side:
            results.append(scenario(side))
        compare(direct, results[-1])
    return results


# -- report --------------------------------------------------------------------------------


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def verdicts(r: Result) -> tuple[bool, bool]:
    """(rate at least TARGET_RATIO of the direct one, added p99 under TARGET_ADDED_P99_MS)."""
    assert r.rate_ratio is not None
    assert r.added_ms_p99 is not None
    return r.rate_ratio >= TARGET_RATIO, r.added_ms_p99 < TARGET_ADDED_P99_MS


def render(results: list[Result], pinning: Pinning) -> str:
    columns: list[tuple[str, str, Callable[[Result], str]]] = [
        ("scenario", "<16", lambda r: r.scenario),
        ("msgs", ">5", lambda r: str(r.messages)),
        ("wall s", ">6", lambda r: f"{r.seconds:.2f}"),
        ("msg/s", ">6", lambda r: f"{r.messages_per_s:.0f}"),
        ("ratio", ">5", lambda r: _opt(r.rate_ratio, ".2f")),
        ("p50 ms", ">6", lambda r: f"{r.latency_ms_median:.2f}"),
        ("p99 ms", ">6", lambda r: f"{r.latency_ms_p99:.2f}"),
        ("+p50 ms", ">7", lambda r: _opt(r.added_ms_median, "+.2f")),
        ("+p99 ms", ">7", lambda r: _opt(r.added_ms_p99, "+.2f")),
        ("gw ms/msg", ">9", lambda r: _opt(r.gateway_cpu_ms_per_msg, ".2f")),
        ("peer ms/msg", ">11", lambda r: f"{r.peer_cpu_ms_per_msg:.2f}"),
        ("client ms/msg", ">13", lambda r: f"{r.client_cpu_ms_per_msg:.2f}"),
        ("login ms", ">8", lambda r: f"{r.login_ms_mean:.0f}"),
        ("gw RSS idle", ">11", lambda r: _opt(r.gateway_rss_idle_mib, ".1f")),
        ("gw RSS peak", ">11", lambda r: _opt(r.gateway_rss_peak_mib, ".1f")),
    ]
    lines = [pinning.describe(), ""]
    lines += ["  ".join(f"{title:{spec}}" for title, spec, _ in columns)]
    lines += ["  ".join(f"{get(r):{spec}}" for _, spec, get in columns) for r in results]
    lines.append("(CPU: ms per message of each process tree; RSS: MiB, sum of VmRSS over the tree)")
    for r in results:
        cpus = ", ".join(f"{name} {cpus}" for name, cpus in r.cpus.items())
        split = ", ".join(f"{k} {v:.2f}" for k, v in r.notes["cpu_s_by_process_sampled"].items())
        busy = r.notes["cpus_busy"]
        lines.append(
            f"{r.scenario}: CPUs {cpus}; CPUs busy: gateway {busy['gateway']:.2f}, client and "
            f"peers {busy['client_and_peers']:.2f}; load average before "
            f"{r.notes['load_average_1min_before']:.2f}; {r.tls}; CPU s by process (sampled): "
            f"{split}"
        )
    for protocol, names in PHASES.items():
        direct = next((r for r in results if r.scenario == f"{protocol}-direct"), None)
        for proxy in (r for r in results if r.scenario.startswith(f"{protocol}-proxy")):
            assert direct is not None
            parts = ", ".join(
                f"{name} {direct.notes[f'{name}_ms_median']:.2f} -> "
                f"{proxy.notes[f'{name}_ms_median']:.2f}"
                for name in names
            )
            lines.append(f"{proxy.scenario} latency by part, median ms (direct -> proxy): {parts}")
    for r in results:
        if r.rate_ratio is None or r.added_ms_p99 is None:
            continue
        rate_met, latency_met = verdicts(r)
        lines.append(
            f"{r.scenario}: {r.rate_ratio:.0%} of the direct rate (target >= "
            f"{TARGET_RATIO:.0%}: {'met' if rate_met else 'NOT met'}); added p99 "
            f"{r.added_ms_p99:+.2f} ms (target < {TARGET_ADDED_P99_MS:.0f} ms: "
            f"{'met' if latency_met else 'NOT met'}); gateway CPU "
            f"{r.gateway_cpu_ms_per_msg or 0:.2f} ms/msg, peers {r.peer_cpu_ms_per_msg:.2f}"
        )
    return "\n".join(lines)


def summary(results: list[Result]) -> dict[str, Any]:
    out = {}
    for r in results:
        if r.rate_ratio is None:
            continue
        rate_met, latency_met = verdicts(r)
        out[r.scenario] = {
            "rate_ratio": r.rate_ratio,
            "target_ratio": TARGET_RATIO,
            "target_met": rate_met,
            "added_ms_median": r.added_ms_median,
            "added_ms_p99": r.added_ms_p99,
            "target_added_ms_p99": TARGET_ADDED_P99_MS,
            "latency_target_met": latency_met,
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The recording proxies against going straight: SMTP submission to "
        "Postfix and POP3 retrieval from Dovecot, each directly and through the gateway; "
        "messages/s, latency per message, CPU and the gateway's memory."
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per scenario")
    parser.add_argument("--size", type=int, default=50 * KIB, help="octets per message")
    parser.add_argument(
        "--sessions", type=int, default=4, help="client sessions at once (POP3: one per user)"
    )
    parser.add_argument("--quick", action="store_true", help="200 messages (a smoke run)")
    parser.add_argument(
        "--only", action="append", choices=["smtp", "pop3"], help="one protocol (repeatable)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        help="a proxy scenario with a gateway of this many protocol workers (repeatable; "
        "default: the gateway's own, one per CPU it starts with)",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pin the gateway to one CPU and the client and peers to another (default: on "
        "with two CPUs or more)",
    )
    parser.add_argument(
        "--profile-gateway",
        type=Path,
        default=None,
        metavar="FILE",
        help="run the gateway's first process under cProfile (trio thread only; with "
        "--workers 0 that is the whole gateway, else the supervisor), the stats written to "
        "FILE with .PROTOCOL-wN before its suffix",
    )
    parser.add_argument("--dir", default=None, help="folder for the data (default: /tmp)")
    parser.add_argument("--json", action="store_true", help="print JSON (the table to stderr)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = 200
    if args.sessions < 1 or args.messages < args.sessions:
        parser.error("--sessions must be at least 1 and at most --messages")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("dovecot", "postfix", "taskset"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            raise SystemExit(f"{tool} is missing: run `make test` (tools/system-packages.sh test)")
    pinning = decide_pinning(args.pin)
    print(pinning.describe(), file=sys.stderr, flush=True)
    protocols = args.only or ["smtp", "pop3"]
    corpus = Corpus(args.size, label="proxy")
    ca = trustme.CA()
    base = Path(args.dir) if args.dir else None
    results: list[Result] = []
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="proxy_bench-", dir=base) as temp:
        folder = Path(temp)
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        for protocol in protocols:
            results += run_protocol(protocol, folder, args, corpus, ca, pinning)
    elapsed = time.perf_counter() - begun
    table = render(results, pinning) + f"\nwhole run: {elapsed:.0f} s"
    if args.json:
        print(table, file=sys.stderr)
        report = {
            "pinning": {
                "on": pinning.on,
                "start": sorted(pinning.start),
                "gateway": sorted(pinning.gateway or ()),
                "client_and_peers": sorted(pinning.others or ()),
            },
            "results": [asdict(r) for r in results],
            "summary": summary(results),
        }
        print(json.dumps(report, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
