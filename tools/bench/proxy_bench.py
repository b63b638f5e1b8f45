"""Recording proxy benchmark: the same client sends mail to Postfix and retrieves mail from
Dovecot, once straight and once through the gateway's recording proxies (SPEC.md 15.3, 15.4),
in one run; the difference is the proxy hop.

Theory of operation
-------------------
One ``python -m gateway serve`` runs throughout with an implicit-TLS SMTP listener
(``smtps``), a POP3S listener and the admin listener; ``[proxy] allow`` admits loopback and
``ca_files`` trusts the CA the peers' certificates come from. Its mailboxes (one per client
session and protocol) are made with ``gateway mailbox create --json`` (the admin API). Each
scenario gets fresh peers, all on 127.0.0.2 with certificates from that CA:

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
explains: the gateway (with its key forge child), the peers (Postfix's master and the
submission server's Dovecot, or the POP3 Dovecot), and this process (the client).

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
    create_mailbox,
    gateway_process,
    mailbox_counts,
    own_cpu,
    percentile,
    settle,
    spread,
    tree_cpu,
    tree_system_cpu,
)

from tests.peers.dovecot import DovecotInstance, private_dovecot
from tests.peers.submission import SubmissionInstance, private_submission

TARGET_RATIO = 0.70  # the target: a proxy keeps at least 70 % of the direct rate
SENDER = "sender@example.com"
RECIPIENT = "archive@example.net"
READY_TIMEOUT = 60.0  # seconds the session threads wait for each other
DRAIN_TIMEOUT = 120.0  # seconds Postfix gets to log every message as sent
KEYFORGE = "keyforge"  # the gateway's only child: python -m gateway.services._keyforge_worker
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


# -- one measured window -------------------------------------------------------------------


@dataclass
class Result:
    scenario: str  # smtp-direct, smtp-proxy, pop3-direct, pop3-proxy
    messages: int
    size: int
    sessions: int
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
    gateway_cpu_s: float = 0.0
    gateway_cpu_ms_per_msg: float = 0.0
    peer_cpu_s: float = 0.0
    peer_cpu_ms_per_msg: float = 0.0
    client_cpu_s: float = 0.0
    login_ms_mean: float = 0.0
    login_ms_max: float = 0.0
    tls: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def protocol(self) -> str:
        return self.scenario.split("-")[0]


Run = Callable[[int, threading.Barrier], SessionResult]


@contextmanager
def samplers(roots: dict[str, int]) -> Iterator[dict[str, ServiceSampler]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(ServiceSampler(pid)) for name, pid in roots.items()}


def measure(
    scenario: str,
    args: argparse.Namespace,
    run: Run,
    gateway: GatewayProcess,
    peers: dict[str, int],
) -> tuple[Result, list[SessionResult]]:
    """Run ``args.sessions`` sessions at once (``run(index, barrier)`` each, in threads) and
    measure the window. ``peers``: name -> root pid of each peer's process tree."""
    sessions = args.sessions
    ready = threading.Barrier(sessions + 1)
    roots = {"gateway": gateway.pid, **peers}
    result = Result(scenario, args.messages, args.size, sessions)
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
        for pid in peers.values():
            settle(pid, DOVECOT_TRANSIENT)
        cpu_after = {name: tree_cpu(pid) for name, pid in roots.items()}
        sys_after = {name: tree_system_cpu(pid) for name, pid in roots.items()}
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
    result.gateway_cpu_s = used["gateway"]
    result.gateway_cpu_ms_per_msg = used["gateway"] * 1000 / received
    result.peer_cpu_s = sum(used[name] for name in peers)
    result.peer_cpu_ms_per_msg = result.peer_cpu_s * 1000 / received
    result.client_cpu_s = client_after - client_before
    logins = [s.login_s * 1000 for s in done]
    result.login_ms_mean = statistics.fmean(logins)
    result.login_ms_max = max(logins)
    result.tls = done[0].tls
    result.notes["cpu_s_by_tree"] = {name: round(value, 2) for name, value in used.items()}
    result.notes["system_cpu_s_by_tree"] = {
        name: round(sys_after[name] - sys_before[name], 2) for name in roots
    }
    result.notes["cpu_s_by_process_sampled"] = {
        f"{tree}:{KEYFORGE if (tree, name) == ('gateway', 'python') else name}": value
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
    mailboxes: dict[str, list[tuple[str, str]]]  # protocol -> (id, password) per session

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.process.cert_file))

    def endpoint(
        self, protocol: str, listener: str, users: dict[str, str], host: str, port: int
    ) -> Endpoint:
        """Proxy logins: ``user%host:port%mailbox`` with the upstream password."""
        logins = [
            (f"{user}%{host}:{port}%{mailbox_id}", password)
            for (user, password), (mailbox_id, _) in zip(
                users.items(), self.mailboxes[protocol], strict=True
            )
        ]
        return Endpoint("127.0.0.1", self.process.ports[listener], self.context(), logins)

    def counts(self, protocol: str) -> list[tuple[int, int]]:
        everything = mailbox_counts(self.process)
        return [everything[mailbox_id] for mailbox_id, _ in self.mailboxes[protocol]]

    def check_growth(
        self,
        scenario: str,
        protocol: str,
        before: list[tuple[int, int]],
        layout: list[list[int]],
        corpus: Corpus,
    ) -> dict[str, Any]:
        """Each mailbox grew by its session's messages and octets; the first and the last
        copy of the first mailbox are the messages relayed, byte for byte."""
        after = self.counts(protocol)
        for k, ((m0, b0), (m1, b1), numbers) in enumerate(zip(before, after, layout, strict=True)):
            if (m1 - m0, b1 - b0) != (len(numbers), len(numbers) * corpus.size):
                raise SystemExit(
                    f"{scenario}: gateway mailbox {k} grew by {m1 - m0} messages and "
                    f"{b1 - b0} octets, expected {len(numbers)} and {len(numbers) * corpus.size}"
                )
        mailbox_id, password = self.mailboxes[protocol][0]
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


def gateway_settings(args: argparse.Namespace, ca_file: Path) -> str:
    return (
        f"[smtp]\nmax_sessions_per_client = {max(50, args.sessions + 1)}\n"
        f"[pop3]\nmax_sessions_per_client = {max(20, args.sessions + 1)}\n"
        f'[proxy]\nallow = ["127.0.0.0/8"]\nca_files = ["{ca_file}"]\n'
    )


# -- SMTP: Postfix submission --------------------------------------------------------------


def postfix_roots(submission: SubmissionInstance) -> dict[str, int]:
    postfix = submission.postfix.master_pid()
    dovecot = submission.dovecot.master_pid()
    assert postfix is not None
    assert dovecot is not None
    return {"postfix": postfix, "dovecot-auth": dovecot}


def run_smtp(
    folder: Path, args: argparse.Namespace, corpus: Corpus, ca: trustme.CA, side: GatewaySide
) -> list[Result]:
    layout = spread(args.messages, args.sessions)
    users = {f"bench{k}": secrets.token_urlsafe(12) for k in range(args.sessions)}
    results = []
    for scenario in ("smtp-direct", "smtp-proxy"):
        print(f"running {scenario} ...", file=sys.stderr, flush=True)
        with private_submission(
            folder, users=users, deliver="discard", ca=ca, name=scenario
        ) as submission:
            if scenario == "smtp-direct":
                endpoint = Endpoint(
                    submission.host,
                    submission.smtps_port,
                    submission.ssl_context(),
                    list(users.items()),
                )
            else:
                endpoint = side.endpoint(
                    "smtp", "smtps", users, submission.host, submission.smtps_port
                )
                before = side.counts("smtp")

            def run(
                index: int, ready: threading.Barrier, endpoint: Endpoint = endpoint
            ) -> SessionResult:
                return smtp_session(endpoint, index, layout[index], corpus, ready)

            roots = postfix_roots(submission)
            result, _ = measure(scenario, args, run, side.process, roots)
            drained = time.perf_counter()
            submission.wait_for_sent(args.messages, DRAIN_TIMEOUT)
            submission.wait_until_queue_empty(DRAIN_TIMEOUT)
            result.notes["postfix_drain_s"] = round(time.perf_counter() - drained, 2)
            sent = submission.sent_count()
            if sent != args.messages:
                raise SystemExit(f"{scenario}: Postfix logged {sent} sent, not {args.messages}")
            result.notes["postfix_sent"] = sent
            if scenario == "smtp-proxy":
                result.notes |= side.check_growth(scenario, "smtp", before, layout, corpus)
        results.append(result)
    compare(*results)
    return results


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


def run_pop3(
    folder: Path, args: argparse.Namespace, corpus: Corpus, ca: trustme.CA, side: GatewaySide
) -> list[Result]:
    layout = spread(args.messages, args.sessions)
    users = {f"bench{k}": secrets.token_urlsafe(12) for k in range(args.sessions)}
    expected = {n: hashlib.sha256(corpus.message(n)).digest() for n in range(args.messages)}
    results = []
    served: dict[int, bytes] = {}  # what Dovecot served directly
    for scenario in ("pop3-direct", "pop3-proxy"):
        print(f"running {scenario} ...", file=sys.stderr, flush=True)
        with private_dovecot(folder, users=users, ca=ca, name=scenario) as dovecot:
            fill_dovecot(dovecot, layout, corpus)
            if scenario == "pop3-direct":
                endpoint = Endpoint(
                    dovecot.host,
                    dovecot.pop3s_port,
                    ssl.create_default_context(cafile=str(dovecot.ca_file)),
                    list(users.items()),
                )
            else:
                endpoint = side.endpoint("pop3", "pop3s", users, dovecot.host, dovecot.pop3s_port)
                before = side.counts("pop3")

            def run(
                index: int, ready: threading.Barrier, endpoint: Endpoint = endpoint
            ) -> SessionResult:
                return pop3_session(endpoint, index, layout[index], ready)

            master = dovecot.master_pid()
            assert master is not None
            result, done = measure(scenario, args, run, side.process, {"dovecot": master})
            digests = {n: digest for s in done for n, digest in s.digests.items()}
            wrong = sorted(n for n, digest in digests.items() if digest != expected[n])
            if wrong:
                raise SystemExit(f"{scenario}: messages {wrong[:10]} differ from those stored")
            if served and digests != served:
                raise SystemExit(f"{scenario}: not the octets Dovecot served directly")
            served = digests
            if any(dovecot.stored(user) for user in users):
                raise SystemExit(f"{scenario}: files left in the Maildirs after QUIT")
            if scenario == "pop3-proxy":
                result.notes |= side.check_growth(scenario, "pop3", before, layout, corpus)
        results.append(result)
    compare(*results)
    return results


# -- report --------------------------------------------------------------------------------


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(results: list[Result]) -> str:
    columns: list[tuple[str, str, Callable[[Result], str]]] = [
        ("scenario", "<11", lambda r: r.scenario),
        ("msgs", ">5", lambda r: str(r.messages)),
        ("wall s", ">6", lambda r: f"{r.seconds:.2f}"),
        ("msg/s", ">6", lambda r: f"{r.messages_per_s:.0f}"),
        ("MB/s", ">5", lambda r: f"{r.mb_per_s:.1f}"),
        ("p50 ms", ">6", lambda r: f"{r.latency_ms_median:.2f}"),
        ("p99 ms", ">6", lambda r: f"{r.latency_ms_p99:.2f}"),
        ("+p50 ms", ">7", lambda r: _opt(r.added_ms_median, "+.2f")),
        ("+p99 ms", ">7", lambda r: _opt(r.added_ms_p99, "+.2f")),
        ("ratio", ">5", lambda r: _opt(r.rate_ratio, ".2f")),
        ("gw CPU s", ">8", lambda r: f"{r.gateway_cpu_s:.2f}"),
        ("peer CPU s", ">10", lambda r: f"{r.peer_cpu_s:.2f}"),
        ("client CPU s", ">12", lambda r: f"{r.client_cpu_s:.2f}"),
        ("login ms", ">8", lambda r: f"{r.login_ms_mean:.0f}"),
    ]
    lines = ["  ".join(f"{title:{spec}}" for title, spec, _ in columns)]
    lines += ["  ".join(f"{get(r):{spec}}" for _, spec, get in columns) for r in results]
    for r in results:
        split = ", ".join(f"{k} {v:.2f}" for k, v in r.notes["cpu_s_by_process_sampled"].items())
        lines.append(f"{r.scenario}: {r.tls}; CPU s by process (sampled): {split}")
    by_name = {r.scenario: r for r in results}
    for protocol, names in PHASES.items():
        pair = [by_name.get(f"{protocol}-{path}") for path in ("direct", "proxy")]
        if None in pair:
            continue
        parts = ", ".join(
            name + " " + " -> ".join(f"{r.notes[f'{name}_ms_median']:.2f}" for r in pair if r)
            for name in names
        )
        lines.append(f"{protocol} latency by part, median ms (direct -> proxy): {parts}")
    for r in results:
        if r.rate_ratio is None:
            continue
        verdict = "met" if r.rate_ratio >= TARGET_RATIO else "NOT met"
        lines.append(
            f"{r.protocol} proxy: {r.rate_ratio:.0%} of the direct rate (target >= "
            f"{TARGET_RATIO:.0%}: {verdict}); gateway CPU {r.gateway_cpu_ms_per_msg:.2f} ms/msg"
        )
    return "\n".join(lines)


def summary(results: list[Result]) -> dict[str, Any]:
    return {
        r.protocol: {
            "rate_ratio": r.rate_ratio,
            "target_ratio": TARGET_RATIO,
            "target_met": r.rate_ratio >= TARGET_RATIO,
            "added_ms_median": r.added_ms_median,
            "added_ms_p99": r.added_ms_p99,
        }
        for r in results
        if r.rate_ratio is not None
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The recording proxies against going straight: SMTP submission to "
        "Postfix and POP3 retrieval from Dovecot, each directly and through the gateway; "
        "messages/s, latency per message and CPU."
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
        "--profile-gateway",
        type=Path,
        default=None,
        metavar="FILE",
        help="run the gateway under cProfile (trio thread only), the stats written to FILE",
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
    for tool in ("dovecot", "postfix"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            raise SystemExit(f"{tool} is missing: run tests/peers/install.sh (as root)")
    protocols = args.only or ["smtp", "pop3"]
    corpus = Corpus(args.size, label="proxy")
    ca = trustme.CA()
    base = Path(args.dir) if args.dir else None
    results: list[Result] = []
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="proxy_bench-", dir=base) as temp:
        folder = Path(temp)
        ca_file = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        (folder / "gateway").mkdir()
        with gateway_process(
            folder / "gateway",
            {"smtps": ("smtp", "implicit"), "pop3s": ("pop3", "implicit")},
            gateway_settings(args, ca_file),
            profile=args.profile_gateway.resolve() if args.profile_gateway else None,
        ) as gateway:
            with ThreadPoolExecutor(4) as pool:
                made = {
                    protocol: [
                        pool.submit(create_mailbox, gateway, f"{protocol}-proxy-{k}")
                        for k in range(args.sessions)
                    ]
                    for protocol in protocols
                }
                side = GatewaySide(gateway, {p: [f.result() for f in fs] for p, fs in made.items()})
            for protocol in protocols:
                runner = run_smtp if protocol == "smtp" else run_pop3
                results += runner(folder, args, corpus, ca, side)
    elapsed = time.perf_counter() - begun
    table = render(results) + f"\nwhole run: {elapsed:.0f} s"
    if args.json:
        print(table, file=sys.stderr)
        report = {"results": [asdict(r) for r in results], "summary": summary(results)}
        print(json.dumps(report, indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
