"""POP3 retrieval benchmark: the gateway against Dovecot, both over implicit TLS (POP3S), in
one run, with one client for both.

Theory of operation
-------------------
Both servers get the same messages (``--messages`` of ``--size`` octets, CRLF lines of
base64 text behind realistic headers, no line starting with "."), spread over
``--mailboxes`` mailboxes in turn. A POP3 maildrop takes one session at a time, so the
client runs one session per mailbox, all at once, each in a thread of this process: connect,
TLS handshake, USER/PASS, STAT, then for every message RETR (read to the terminating
CRLF "." CRLF) and DELE, then QUIT, whose +OK means the deletions are done. Nothing is
pipelined. Every message read is checked against what was stored (Dovecot: identical;
the gateway: identical after its own ``Received:`` field), and afterwards each mailbox
must be empty, so a fast wrong answer cannot pass.

``dovecot``
    A private Dovecot 2.3 (tests/peers/dovecot.py): Maildir, POP3S on 127.0.0.2, the
    messages written into each user's ``new/`` beforehand (not measured). Dovecot's defaults
    otherwise: ``pop3-login`` terminates TLS and relays to a ``pop3`` process per session.
``gateway``
    ``python -m gateway serve`` with an SMTP, a POP3S and the admin listener; mailboxes
    created with ``python -m gateway mailbox create --json`` (the admin API), filled over
    SMTP with smtplib (not measured); logins with the mailbox id and its password.

Numbers. Wall time runs from the moment every session thread is ready to connect until the
last QUIT is answered. CPU seconds are those of the server's whole process tree over that
window, exactly: for the root and every live descendant, utime + stime + cutime + cstime
from /proc/PID/stat, summed, before and after; a process that ended in between was reaped
by its parent, which adds its CPU to the parent's cutime/cstime (Dovecot's master reaps
every ``pop3`` and ``pop3-login`` process). The per-service split of Dovecot's CPU is
sampled every 50 ms and therefore approximate; the total is not. Client CPU is this
process's (all threads): client and server share the machine's cores.

Run ``python tools/bench/pop3_bench.py --help``; tools/bench/README.md explains each number.
"""

from __future__ import annotations

import argparse
import functools
import json
import secrets
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    FAST_KDF_SETTINGS,
    KIB,
    MB,
    TIMEOUT,
    Corpus,
    GatewayProcess,
    ProtocolError,
    ServiceSampler,
    Session,
    create_mailbox,
    gateway_check,
    gateway_process,
    own_cpu,
    settle,
    spread,
    tree_cpu,
)

from tests.peers.dovecot import private_dovecot

# -- the client ----------------------------------------------------------------------------


@dataclass
class SessionResult:
    messages: int = 0
    octets: int = 0
    login_s: float = 0.0
    tls: str = ""


def retrieve_all(
    host: str,
    port: int,
    context: ssl.SSLContext,
    user: str,
    password: str,
    expected: list[int],
    check: Callable[[int, bytes], None],
) -> SessionResult:
    started = time.perf_counter()
    session = Session(host, port, context)
    result = SessionResult(tls=session.tls())
    try:
        session.login(user, password)
        result.login_s = time.perf_counter() - started
        count = int(session.command("STAT").split()[1])
        if count != len(expected):
            raise ProtocolError(f"{user}: STAT says {count} messages, {len(expected)} were stored")
        for number, n in enumerate(expected, 1):
            session.command(f"RETR {number}")
            message = session.multiline()
            check(n, message)
            result.messages += 1
            result.octets += len(message)
            session.command(f"DELE {number}")
        session.command("QUIT")
    finally:
        session.close()
    return result


def count_left(host: str, port: int, context: ssl.SSLContext, user: str, password: str) -> int:
    session = Session(host, port, context)
    try:
        session.line()
        session.command(f"USER {user}")
        session.command(f"PASS {password}")
        count = int(session.command("STAT").split()[1])
        session.command("QUIT")
        return count
    finally:
        session.close()


# -- one run against one server ------------------------------------------------------------


@dataclass
class Result:
    server: str
    messages: int
    size: int
    mailboxes: int
    seconds: float = 0.0
    messages_per_s: float = 0.0
    mb_per_s: float = 0.0
    octets: int = 0  # as received by the client (the gateway's include its Received: field)
    server_cpu_s: float = 0.0
    server_cpu_ms_per_msg: float = 0.0
    client_cpu_s: float = 0.0
    login_ms_mean: float = 0.0
    login_ms_max: float = 0.0
    tls: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    context: ssl.SSLContext
    pid: int  # the root of the server's process tree
    accounts: list[tuple[str, str]]  # (user, password) per mailbox
    check: Callable[[int, bytes], None]


def measure(target: Target, args: argparse.Namespace, layout: list[list[int]]) -> Result:
    ready = threading.Barrier(len(layout) + 1)

    def one(index: int) -> SessionResult:
        user, password = target.accounts[index]
        ready.wait()
        return retrieve_all(
            target.host, target.port, target.context, user, password, layout[index], target.check
        )

    result = Result(target.name, args.messages, args.size, args.mailboxes)
    with ThreadPoolExecutor(len(layout)) as pool, ServiceSampler(target.pid) as services:
        futures = [pool.submit(one, index) for index in range(len(layout))]
        cpu_before = tree_cpu(target.pid)
        client_before = own_cpu()
        ready.wait()
        started = time.perf_counter()
        sessions = [future.result() for future in futures]
        result.seconds = time.perf_counter() - started
        client_after = own_cpu()
        settle(target.pid, ("/pop3", "/pop3-login"))
        cpu_after = tree_cpu(target.pid)
    result.octets = sum(s.octets for s in sessions)
    received = sum(s.messages for s in sessions)
    if received != args.messages:
        raise SystemExit(f"{target.name}: {received} messages retrieved of {args.messages}")
    left = [count_left(target.host, target.port, target.context, *a) for a in target.accounts]
    if any(left):
        raise SystemExit(f"{target.name}: messages left after QUIT: {left}")
    result.messages_per_s = received / result.seconds
    result.mb_per_s = result.octets / MB / result.seconds
    result.server_cpu_s = cpu_after - cpu_before
    result.server_cpu_ms_per_msg = result.server_cpu_s * 1000 / received
    result.client_cpu_s = client_after - client_before
    logins = [s.login_s * 1000 for s in sessions]
    result.login_ms_mean = sum(logins) / len(logins)
    result.login_ms_max = max(logins)
    result.tls = sessions[0].tls
    result.notes["cpu_by_process_sampled"] = services.by_service()
    return result


# -- Dovecot -------------------------------------------------------------------------------


def run_dovecot(folder: Path, args: argparse.Namespace, corpus: Corpus) -> Result:
    layout = spread(args.messages, args.mailboxes)
    users = {f"bench{m}": secrets.token_urlsafe(12) for m in range(args.mailboxes)}
    with private_dovecot(folder, users=users, name="dovecot") as dovecot:
        for user, numbers in zip(users, layout, strict=True):
            for n in numbers:
                dovecot.deliver(user, corpus.message(n))
        master = dovecot.master_pid()
        assert master is not None

        def check(n: int, message: bytes) -> None:
            if message != corpus.message(n):  # CRLF mail comes back as it was (pop3_octets)
                raise ProtocolError(f"dovecot: message {n} differs from what was stored")

        target = Target(
            name="dovecot",
            host=dovecot.host,
            port=dovecot.pop3s_port,
            context=ssl.create_default_context(cafile=str(dovecot.ca_file)),
            pid=master,
            accounts=list(users.items()),
            check=check,
        )
        result = measure(target, args, layout)
        if any(dovecot.stored(user) for user in users):
            raise SystemExit("dovecot: files left in the Maildirs after QUIT")
        result.notes["version"] = subprocess.run(
            ["dovecot", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return result


# -- the gateway ---------------------------------------------------------------------------


def pop3_gateway(
    folder: Path, args: argparse.Namespace, workers: int | None = None
) -> AbstractContextManager[GatewayProcess]:
    """The gateway under test: SMTP (to fill it), POP3S and the admin listener (a context
    manager, from :func:`_common.gateway_process`)."""
    kdf = FAST_KDF_SETTINGS if args.fast_kdf else ""
    sessions = max(20, args.mailboxes + 1)
    return gateway_process(
        folder,
        {"smtp": ("smtp", "starttls"), "pop3s": ("pop3", "implicit")},
        f"[pop3]\nmax_sessions_per_client = {sessions}\n"
        f"[smtp]\nmax_sessions_per_client = {max(50, args.mailboxes)}\n{kdf}"
        + (f"[server]\nworkers = {workers}\n" if workers is not None else ""),
    )


def fill(port: int, mailbox_id: str, numbers: list[int], corpus: Corpus) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        for n in numbers:
            client.sendmail("bench@example.com", [f"mbx-{mailbox_id}@localhost"], corpus.message(n))


def fill_all(
    port: int, accounts: Sequence[tuple[str, str]], layout: list[list[int]], corpus: Corpus
) -> None:
    """Each account's messages of ``layout`` sent over SMTP, one connection per account, all
    at once."""
    with ThreadPoolExecutor(max(1, len(accounts))) as pool:
        filled = [
            pool.submit(fill, port, mailbox_id, numbers, corpus)
            for (mailbox_id, _), numbers in zip(accounts, layout, strict=True)
        ]
        for future in filled:
            future.result()


def run_gateway(
    folder: Path, args: argparse.Namespace, corpus: Corpus, workers: int | None = None
) -> Result:
    layout = spread(args.messages, args.mailboxes)
    with pop3_gateway(folder, args, workers) as gateway:
        accounts = [create_mailbox(gateway, f"bench{m}") for m in range(args.mailboxes)]
        fill_all(gateway.ports["smtp"], accounts, layout, corpus)

        target = Target(
            name="gateway" if workers is None else f"gateway w={workers}",
            host="127.0.0.1",
            port=gateway.ports["pop3s"],
            context=ssl.create_default_context(cafile=str(gateway.cert_file)),
            pid=gateway.pid,
            accounts=accounts,
            check=gateway_check(corpus),
        )
        result = measure(target, args, layout)
        result.notes["kdf"] = "fast (64 KiB, 1 pass)" if args.fast_kdf else "default"
    return result


# -- report --------------------------------------------------------------------------------


def render(results: list[Result]) -> str:
    columns: list[tuple[str, str, Callable[[Result], object]]] = [
        ("server", "<9", lambda r: r.server),
        ("msgs", ">6", lambda r: r.messages),
        ("seconds", ">8.2f", lambda r: r.seconds),
        ("msgs/s", ">7.0f", lambda r: r.messages_per_s),
        ("MB/s", ">6.1f", lambda r: r.mb_per_s),
        ("server CPU s", ">12.2f", lambda r: r.server_cpu_s),
        ("CPU ms/msg", ">10.3f", lambda r: r.server_cpu_ms_per_msg),
        ("client CPU s", ">12.2f", lambda r: r.client_cpu_s),
        ("login ms", ">8.0f", lambda r: r.login_ms_mean),
    ]
    lines = ["  ".join(f"{title:{spec[0]}{spec[1:].split('.')[0]}}" for title, spec, _ in columns)]
    for r in results:
        lines.append("  ".join(f"{getter(r):{spec}}" for _, spec, getter in columns))
    for r in results:
        split = ", ".join(f"{k} {v:.2f}" for k, v in r.notes["cpu_by_process_sampled"].items())
        lines.append(f"{r.server}: {r.tls}; server CPU s by process (sampled): {split}")
    by_name = {r.server: r for r in results}
    d = by_name.get("dovecot")
    for g in (r for r in results if r.server.startswith("gateway")):
        if d is None:
            break
        lines.append(
            f"{g.server} / dovecot: {g.messages_per_s / d.messages_per_s:.2f}x messages/s, "
            f"{g.mb_per_s / d.mb_per_s:.2f}x MB/s, "
            f"{g.server_cpu_s / d.server_cpu_s:.2f}x server CPU seconds"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="POP3S retrieval (RETR + DELE of every message) from Dovecot and from the "
        "gateway: messages/s, MB/s and server CPU, with one client for both."
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages in all")
    parser.add_argument("--size", type=int, default=50 * KIB, help="octets per message")
    parser.add_argument(
        "--mailboxes", type=int, default=4, help="mailboxes, one client session each, at once"
    )
    parser.add_argument(
        "--only", action="append", choices=["dovecot", "gateway"], help="run one (repeatable)"
    )
    parser.add_argument(
        "--fast-kdf",
        action="store_true",
        help="gateway mailboxes with the smallest Argon2id (logins then cost nothing)",
    )
    parser.add_argument("--dir", default=None, help="folder for the data (default: /tmp)")
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        help="run the gateway with this many protocol workers (repeatable; default: its own)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (the table to stderr)")
    args = parser.parse_args(argv)
    if args.mailboxes < 1 or args.messages < args.mailboxes:
        parser.error("--mailboxes must be at least 1 and at most --messages")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("dovecot") is None and shutil.which("dovecot", path="/usr/sbin") is None:
        raise SystemExit("dovecot is missing: run `make test` (tools/system-packages.sh test)")
    corpus = Corpus(args.size)
    runners: dict[str, Callable[[Path, argparse.Namespace, Corpus], Result]] = {
        "dovecot": run_dovecot
    }
    for workers in args.workers or [None]:
        label = "gateway" if workers is None else f"gateway w={workers}"
        runners[label] = functools.partial(run_gateway, workers=workers)
    results = []
    base = Path(args.dir) if args.dir else None
    with tempfile.TemporaryDirectory(prefix="pop3_bench-", dir=base) as temp:
        for name, runner in runners.items():
            if args.only and name.split()[0] not in args.only:
                continue
            folder = Path(temp) / name.replace(" ", "-")
            folder.mkdir()
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results.append(runner(folder, args, corpus))
    table = render(results)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
