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
import base64
import json
import os
import random
import resource
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.peers.dovecot import private_dovecot  # noqa: E402
from tests.peers.tools import free_port, wait_for_port  # noqa: E402

KIB = 1024
MB = 1_000_000  # MB/s are decimal megabytes of message octets as the client received them
LINE = 76  # base64 characters per body line, as MIME writes them
POOL_BYTES = 3 * 1024 * KIB  # random bytes behind the base64 pool (4 MiB of text)
TIMEOUT = 120.0  # seconds any one socket operation may take
TICKS = os.sysconf("SC_CLK_TCK")
DATE = formatdate(1_700_000_000, localtime=False)


# -- the messages --------------------------------------------------------------------------


class Corpus:
    """Message ``n`` of ``size`` octets, the same every time it is asked for."""

    def __init__(self, size: int, seed: int = 1) -> None:
        text = base64.b64encode(random.Random(seed).randbytes(POOL_BYTES))
        lines = [text[i : i + LINE] for i in range(0, len(text) - LINE, LINE)]
        self.pool = b"\r\n".join(lines) + b"\r\n"
        self.size = size
        if size < 1024 or size > len(self.pool) // 2:
            raise SystemExit(f"--size must be 1024 to {len(self.pool) // 2} octets")

    def message(self, n: int) -> bytes:
        header = (
            f"From: sender{n % 97}@example.com\r\nTo: archive@example.net\r\n"
            f"Subject: pop3 bench message {n}\r\nDate: {DATE}\r\n"
            f"Message-ID: <{n}.pop3-bench@example.com>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        room = self.size - len(header) - 2
        lines = (len(self.pool) - self.size) // (LINE + 2)
        start = (n * 7919 % lines) * (LINE + 2)
        body = bytearray(self.pool[start : start + room])
        if body.endswith(b"\r"):
            body[-1:] = b"A"  # never a bare CR before the final CRLF
        return header + bytes(body) + b"\r\n"


def spread(messages: int, mailboxes: int) -> list[list[int]]:
    """Message numbers per mailbox, in turn: mailbox m gets m, m + M, m + 2M, ..."""
    return [list(range(m, messages, mailboxes)) for m in range(mailboxes)]


# -- CPU of a process tree -----------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, float, float]:
    """(parent pid, command, own CPU s, reaped children's CPU s) of one process."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): ppid is 4, utime 14, stime 15, cutime 16, cstime 17.
    own = (int(fields[11]) + int(fields[12])) / TICKS
    reaped = (int(fields[13]) + int(fields[14])) / TICKS
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        title = ""
    return int(fields[1]), title, own, reaped


def process_tree(root: int) -> dict[int, tuple[str, float, float]]:
    """{pid: (command, own CPU, reaped children's CPU)} of ``root`` and its live descendants."""
    table: dict[int, tuple[int, str, float, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                table[int(entry.name)] = _stat(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree: dict[int, tuple[str, float, float]] = {}
    todo = [root] if root in table else []
    while todo:
        pid = todo.pop()
        _, title, own, reaped = table[pid]
        tree[pid] = (title, own, reaped)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu(root: int) -> float:
    """CPU seconds the tree has used so far, ended processes included (see the docstring)."""
    return sum(own + reaped for _, own, reaped in process_tree(root).values())


class ServiceSampler:
    """Approximate CPU per command name (Dovecot titles its processes by service), sampled
    every 50 ms: a process's CPU after its last sample is not seen."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.first: dict[int, float] = {}  # CPU at the start; 0 for processes born later
        self.last: dict[int, tuple[str, float]] = {}
        self._started = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for pid, (title, own, _) in process_tree(self.root).items():
            self.first.setdefault(pid, 0.0 if self._started else own)
            name = "main" if pid == self.root else title.rsplit("/", 1)[-1] or title
            self.last[pid] = (name, own)
        self._started = True

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def __enter__(self) -> ServiceSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def by_service(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (name, own) in self.last.items():
            out[name] = round(out.get(name, 0.0) + own - self.first.get(pid, 0.0), 2)
        return dict(sorted(out.items(), key=lambda item: -item[1]))


# -- the client ----------------------------------------------------------------------------


class ProtocolError(Exception):
    pass


class Session:
    """A blocking POP3 client over TLS that reads in large pieces: as little client work
    per octet as Python allows, so the server is what is measured."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname="localhost")
        self.buffer = bytearray()

    def _fill(self) -> None:
        chunk = self.sock.recv(256 * KIB)
        if not chunk:
            raise ProtocolError("connection closed by the server")
        self.buffer += chunk

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def command(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        reply = self.line()
        if not reply.startswith(b"+OK"):
            shown = text if not text.startswith("PASS") else "PASS ..."
            raise ProtocolError(f"{shown}: {reply!r}")
        return reply

    def multiline(self) -> bytes:
        """The body of a multi-line reply, dot-unstuffed, up to and including the CRLF
        before the terminating "."."""
        if self.buffer.startswith(b".\r\n"):
            del self.buffer[:3]
            return b""
        start = 0
        while (end := self.buffer.find(b"\r\n.\r\n", start)) < 0:
            start = max(0, len(self.buffer) - 4)
            self._fill()
        body = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 5]
        if body.startswith(b".."):
            body = body[1:]
        return body.replace(b"\r\n..", b"\r\n.")

    def close(self) -> None:
        self.sock.close()


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
    result = SessionResult(tls=f"{session.sock.version()} {(session.sock.cipher() or ('',))[0]}")
    try:
        greeting = session.line()
        if not greeting.startswith(b"+OK"):
            raise ProtocolError(f"greeting: {greeting!r}")
        session.command(f"USER {user}")
        session.command(f"PASS {password}")
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
        client_before = _own_cpu()
        ready.wait()
        started = time.perf_counter()
        sessions = [future.result() for future in futures]
        result.seconds = time.perf_counter() - started
        client_after = _own_cpu()
        _settle(target.pid)
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


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settle(root: int) -> None:
    """Wait (up to 5 s) until the per-session processes are gone and reaped, so that their
    CPU has reached their parent's cutime/cstime."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        titles = [title for title, _, _ in process_tree(root).values()]
        if not any(title.endswith(("/pop3", "/pop3-login")) for title in titles):
            return
        time.sleep(0.02)


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


@contextmanager
def gateway_process(folder: Path, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    data = folder / "data"
    ports = {name: free_port() for name in ("smtp", "pop3s", "admin")}
    kdf = "[store.kdf]\nmemory_kib = 64\niterations = 1\nlanes = 1\n" if args.fast_kdf else ""
    sessions = max(20, args.mailboxes + 1)
    config = folder / "gateway.toml"
    config.write_text(
        f'data_dir = "{data}"\nhostname = "localhost"\nmail_domain = "localhost"\n'
        f'[[listeners]]\nname = "smtp"\nprotocol = "smtp"\nport = {ports["smtp"]}\n'
        'tls = "starttls"\n'
        f'[[listeners]]\nname = "pop3s"\nprotocol = "pop3"\nport = {ports["pop3s"]}\n'
        'tls = "implicit"\n'
        f'[[listeners]]\nname = "admin"\nprotocol = "admin"\nport = {ports["admin"]}\n'
        'tls = "implicit"\n'
        f"[pop3]\nmax_sessions_per_client = {sessions}\n"
        f"[smtp]\nmax_sessions_per_client = {max(50, args.mailboxes)}\n{kdf}"
    )
    admin_password = secrets.token_urlsafe(18)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_ADMIN_PASSWORD"] = admin_password
    log_path = folder / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        for name, port in ports.items():
            try:
                wait_for_port("127.0.0.1", port, 60)
            except TimeoutError:
                raise SystemExit(
                    f"the gateway's {name} listener did not come up:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                ) from None
        yield {
            "process": process,
            "data": data,
            "ports": ports,
            "env": env,
            "log": log_path,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def create_mailbox(gateway: dict[str, Any], name: str) -> tuple[str, str]:
    done = subprocess.run(
        [
            sys.executable, "-m", "gateway", "mailbox", "create", name, "--json",
            "--url", f"wss://localhost:{gateway['ports']['admin']}/api",
            "--data-dir", str(gateway["data"]),
        ],
        cwd=ROOT,
        env=gateway["env"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"gateway mailbox create exited {done.returncode}: {done.stderr}")
    created = json.loads(done.stdout)
    return str(created["mailbox"]["mailbox_id"]), str(created["password"])


def fill(port: int, mailbox_id: str, numbers: list[int], corpus: Corpus) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        for n in numbers:
            client.sendmail("bench@example.com", [f"mbx-{mailbox_id}@localhost"], corpus.message(n))


def run_gateway(folder: Path, args: argparse.Namespace, corpus: Corpus) -> Result:
    layout = spread(args.messages, args.mailboxes)
    with gateway_process(folder, args) as gateway:
        accounts = [create_mailbox(gateway, f"bench{m}") for m in range(args.mailboxes)]
        with ThreadPoolExecutor(args.mailboxes) as pool:
            filled = [
                pool.submit(fill, gateway["ports"]["smtp"], mailbox_id, numbers, corpus)
                for (mailbox_id, _), numbers in zip(accounts, layout, strict=True)
            ]
            for future in filled:
                future.result()

        def check(n: int, message: bytes) -> None:
            # What SMTP delivered, behind the gateway's Received: field (SPEC.md section 14).
            original = corpus.message(n)
            extra = len(message) - len(original)
            if not (
                message.endswith(original)
                and message.startswith(b"Received: ")
                and 0 < extra < 2048
            ):
                raise ProtocolError(f"gateway: message {n} differs from what was sent")

        target = Target(
            name="gateway",
            host="127.0.0.1",
            port=gateway["ports"]["pop3s"],
            context=ssl.create_default_context(cafile=str(gateway["data"] / "tls" / "cert.pem")),
            pid=gateway["process"].pid,
            accounts=accounts,
            check=check,
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
    if "gateway" in by_name and "dovecot" in by_name:
        g, d = by_name["gateway"], by_name["dovecot"]
        lines.append(
            f"gateway / dovecot: {g.messages_per_s / d.messages_per_s:.2f}x messages/s, "
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
    parser.add_argument("--json", action="store_true", help="print JSON (the table to stderr)")
    args = parser.parse_args(argv)
    if args.mailboxes < 1 or args.messages < args.mailboxes:
        parser.error("--mailboxes must be at least 1 and at most --messages")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("dovecot") is None and shutil.which("dovecot", path="/usr/sbin") is None:
        raise SystemExit("dovecot is missing: run tests/peers/install.sh (as root)")
    corpus = Corpus(args.size)
    runners = {"dovecot": run_dovecot, "gateway": run_gateway}
    results = []
    base = Path(args.dir) if args.dir else None
    with tempfile.TemporaryDirectory(prefix="pop3_bench-", dir=base) as temp:
        for name, runner in runners.items():
            if args.only and name not in args.only:
                continue
            folder = Path(temp) / name
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
