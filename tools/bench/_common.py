"""What the SMTP, POP3, proxy, idle and fleet benchmarks share: the messages, the CPU and
memory of a process tree read from /proc, which part each gateway process plays, pinning
process trees to CPUs (``taskset``), a POP3 client over TLS, smtp-source runs, and a
``gateway serve`` process with mailboxes made through the admin API. See
tools/bench/README.md for what each number means.

The benchmarks run as scripts (``python tools/bench/NAME.py``), so this folder is on
``sys.path`` and they ``import _common``; this module puts the repository root there too, for
``gateway`` and ``tests.peers``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import re
import resource
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.peers.tools import free_port, wait_for_port  # noqa: E402
from tests.peers.tools import smtp_source as _smtp_source  # noqa: E402

KIB = 1024
MB = 1_000_000  # MB/s are decimal megabytes of message octets
LINE = 76  # base64 characters per body line, as MIME writes them
POOL_BYTES = 3 * 1024 * KIB  # random bytes behind the base64 pool (4 MiB of text)
TIMEOUT = 120.0  # seconds any one socket operation may take
SOURCE_TIMEOUT = 3600.0  # seconds one smtp-source run may take
TICKS = os.sysconf("SC_CLK_TCK")
DATE = formatdate(1_700_000_000, localtime=False)


# -- the messages --------------------------------------------------------------------------


class Corpus:
    """Message ``n`` of ``size`` octets, the same every time it is asked for: realistic
    headers, then 76-character base64 lines with CRLF ends cut from a pool of random bytes
    (no line starts with ".")."""

    def __init__(self, size: int, seed: int = 1, label: str = "pop3") -> None:
        text = base64.b64encode(random.Random(seed).randbytes(POOL_BYTES))
        lines = [text[i : i + LINE] for i in range(0, len(text) - LINE, LINE)]
        self.pool = b"\r\n".join(lines) + b"\r\n"
        self.size = size
        self.label = label
        if size < 1024 or size > len(self.pool) // 2:
            raise SystemExit(f"--size must be 1024 to {len(self.pool) // 2} octets")

    def message(self, n: int) -> bytes:
        header = (
            f"From: sender{n % 97}@example.com\r\nTo: archive@example.net\r\n"
            f"Subject: {self.label} bench message {n}\r\nDate: {DATE}\r\n"
            f"Message-ID: <{n}.{self.label}-bench@example.com>\r\nMIME-Version: 1.0\r\n"
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


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ascending values, nearest rank below; 0 if empty."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


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
    """CPU seconds the tree has used so far: for the root and every live descendant, utime +
    stime + cutime + cstime. A process that ended was reaped by its parent, whose cutime and
    cstime then carry its whole CPU."""
    return sum(own + reaped for _, own, reaped in process_tree(root).values())


def tree_system_cpu(root: int) -> float:
    """The system (kernel) part of :func:`tree_cpu`: stime + cstime, summed the same way."""
    total = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile: its parent's cstime has it
        total += int(fields[12]) + int(fields[14])
    return total / TICKS


def own_cpu() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def settle(root: int, transient: tuple[str, ...], timeout: float = 5.0) -> None:
    """Wait (up to ``timeout``) until no process of the tree has a command ending in one of
    ``transient`` (Dovecot's per-session ``/pop3``, ``/pop3-login``), so that their CPU has
    reached their parent's cutime/cstime."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        titles = [title for title, _, _ in process_tree(root).values()]
        if not any(title.endswith(transient) for title in titles):
            return
        time.sleep(0.02)


def command_line(pid: int) -> list[str]:
    """The arguments of a process ([] once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def gateway_role(argv: list[str]) -> str | None:
    """The part a gateway process plays, from its command line (SPEC.md 16.1): ``journal``,
    the worker's name (``worker-1``), ``keyforge`` (the key forge's child, 5.4), ``gateway``
    (the supervisor, or with ``--workers 0`` everything in one process); None for another
    program."""
    if "gateway.services._keyforge_worker" in argv:
        return "keyforge"
    if "gateway" not in argv or "serve" not in argv:
        return None
    if "--role" in argv[:-1]:
        role = argv[argv.index("--role") + 1]
        if role == "worker" and "--name" in argv[:-1]:
            return argv[argv.index("--name") + 1]
        return role
    return "gateway"


def process_name(pid: int, title: str, root: int) -> str:
    """What to call a process of a tree: ``main`` for the root, a gateway process's role,
    else the last part of its title (Dovecot's ``dovecot-NAME/pop3``, Postfix's daemons)."""
    if pid == root:
        return "main"
    role = gateway_role(command_line(pid))
    return role if role is not None else title.rsplit("/", 1)[-1] or title


@dataclass(frozen=True)
class Memory:
    """One process's memory, in bytes, from /proc/PID/status and smaps_rollup."""

    pid: int
    name: str  # process_name(), with the root called by its gateway role if it has one
    rss: int  # VmRSS: resident now, shared pages (libraries) counted in every process
    hwm: int  # VmHWM: the largest VmRSS since the process started
    pss: int  # Pss: resident with each shared page divided among the processes sharing it


def _status_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def tree_memory(root: int) -> list[Memory]:
    """The memory of ``root`` and each live descendant, the root first."""
    out = []
    for pid, (title, _, _) in sorted(process_tree(root).items(), key=lambda p: p[0] != root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue  # gone meanwhile
        try:
            pss = _status_kib(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss")
        except OSError:
            pss = 0
        name = process_name(pid, title, root)
        if pid == root:
            name = gateway_role(command_line(pid)) or name
        out.append(
            Memory(
                pid,
                name,
                _status_kib(status, "VmRSS") * KIB,
                _status_kib(status, "VmHWM") * KIB,
                pss * KIB,
            )
        )
    if len(out) > 1 and out[0].name == "gateway" and any(m.name == "journal" for m in out):
        out[0] = dataclasses.replace(out[0], name="supervisor")
    return out


def tree_rss(root: int) -> int:
    """Bytes resident in the whole tree now: the sum of every process's VmRSS (cheap enough
    to sample every 50 ms: /proc/PID/status only)."""
    total = 0
    for pid in process_tree(root):
        try:
            total += _status_kib(Path(f"/proc/{pid}/status").read_text(), "VmRSS") * KIB
        except OSError:
            continue  # gone meanwhile
    return total


# -- CPU affinity --------------------------------------------------------------------------


def cpu_list(cpus: Collection[int]) -> str:
    """``taskset -c``'s form of a set of CPUs: "0,1"."""
    return ",".join(str(cpu) for cpu in sorted(cpus))


def tree_tasks(root: int, *, tree: bool = True) -> list[int]:
    """Every thread (task id) of every live process of the tree (of ``root`` alone unless
    ``tree``)."""
    tasks = []
    for pid in process_tree(root) if tree else [root]:
        try:
            tasks += [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue  # gone meanwhile
    return tasks


def tree_affinity(root: int, *, tree: bool = True) -> set[frozenset[int]]:
    """The distinct CPU sets the threads of the tree (or of ``root`` alone) may run on."""
    seen = set()
    for task in tree_tasks(root, tree=tree):
        try:
            seen.add(frozenset(os.sched_getaffinity(task)))
        except OSError:
            continue  # gone meanwhile
    return seen


def describe_affinity(root: int, *, tree: bool = True) -> str:
    """The CPUs the tree's threads may run on: "0", "0,1", or "0 / 1" when they differ."""
    return " / ".join(sorted(cpu_list(s) for s in tree_affinity(root, tree=tree))) or "-"


def pin(root: int, cpus: Collection[int], *, tree: bool = True) -> int:
    """Pin every thread of ``root`` (and, with ``tree``, of each live descendant) to ``cpus``
    with ``taskset -a -p -c``; processes and threads made later inherit it from their parent.
    Repeated until every thread is pinned (one started meanwhile by a thread not yet pinned
    is caught by the next round). Returns how many threads are pinned."""
    wanted = frozenset(cpus)
    for _ in range(10):
        for pid in process_tree(root) if tree else [root]:
            subprocess.run(
                ["taskset", "-a", "-p", "-c", cpu_list(wanted), str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,  # a process that ended meanwhile; the check below decides
            )
        if tree_affinity(root, tree=tree) == {wanted}:
            return len(tree_tasks(root, tree=tree))
        time.sleep(0.05)
    raise SystemExit(f"could not pin process {root} to CPUs {cpu_list(wanted)}")


class Sampler:
    """Calls :meth:`sample` on entry, every ``interval`` seconds on a thread while entered,
    and once more on exit."""

    interval = 0.05

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


class ServiceSampler(Sampler):
    """Approximate CPU per command name (Dovecot titles its processes by service, Postfix's
    are named by daemon, a gateway's by role), sampled every 50 ms: a process's CPU after its
    last sample is not seen. The root process is called ``main``. With ``rss``, also the
    largest sum of VmRSS over the tree at any one sample (``rss_peak``, bytes)."""

    def __init__(self, root: int, *, rss: bool = False) -> None:
        self.root = root
        self.first: dict[int, float] = {}  # CPU at the start; 0 for processes born later
        self.last: dict[int, tuple[str, float]] = {}
        self.rss = rss
        self.rss_peak = 0
        self._started = False
        super().__init__()

    def sample(self) -> None:
        for pid, (title, own, _) in process_tree(self.root).items():
            self.first.setdefault(pid, 0.0 if self._started else own)
            name = self.last[pid][0] if pid in self.last else process_name(pid, title, self.root)
            self.last[pid] = (name, own)
        if self.rss:
            self.rss_peak = max(self.rss_peak, tree_rss(self.root))
        self._started = True

    def by_service(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, (name, own) in self.last.items():
            out[name] = round(out.get(name, 0.0) + own - self.first.get(pid, 0.0), 2)
        return dict(sorted(out.items(), key=lambda item: -item[1]))


# -- a POP3 client -------------------------------------------------------------------------


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

    def login(self, user: str, password: str) -> None:
        """The greeting, then USER and PASS."""
        greeting = self.line()
        if not greeting.startswith(b"+OK"):
            raise ProtocolError(f"greeting: {greeting!r}")
        self.command(f"USER {user}")
        self.command(f"PASS {password}")

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

    def tls(self) -> str:
        return f"{self.sock.version()} {(self.sock.cipher() or ('',))[0]}"

    def close(self) -> None:
        self.sock.close()


# -- smtp-source ---------------------------------------------------------------------------


def smtp_source(
    port: int, messages: int, sessions: int, size: int, recipient: str, *, host: str = "127.0.0.1"
) -> float:
    """Wall seconds smtp-source took to send ``messages`` messages of ``size`` payload octets
    over ``sessions`` parallel sessions to ``host``, each message on a connection of its own."""
    started = time.perf_counter()
    _smtp_source(
        host,
        port,
        sessions=sessions,
        messages=messages,
        size=size,
        sender="bench@example.com",
        to=recipient,
        reuse_connection=False,
        timeout=SOURCE_TIMEOUT,
    )
    return time.perf_counter() - started


# -- the gateway ---------------------------------------------------------------------------

# [store.kdf] for mailboxes whose logins cost nothing: the smallest legal Argon2id.
FAST_KDF_SETTINGS = (
    "[store.kdf]\nmemory_kib = 64\niterations = 1\nlanes = 1\ninsecure_fast_for_tests = true\n"
)


@dataclass(frozen=True)
class GatewayProcess:
    process: subprocess.Popen[bytes]
    data: Path  # its data folder
    ports: dict[str, int]  # listener name -> port: admin on 127.0.0.1, the others on address
    env: dict[str, str]  # for the admin commands: GATEWAY_ADMIN_PASSWORD (or GATEWAY_TOKEN)
    log: Path  # its standard output and error
    config: Path
    address: str = "127.0.0.1"  # where its listeners other than admin listen

    @property
    def pid(self) -> int:
        return self.process.pid

    def workers(self) -> int:
        """How many protocol workers it runs (0: everything in one process), from its log."""
        text = self.log.read_text(errors="replace")
        found = re.search(r"event=supervisor-ready workers=(\d+)", text)
        return int(found.group(1)) if found else 0

    @property
    def cert_file(self) -> Path:
        """Its self-signed certificate (names localhost and 127.0.0.1): the file to trust."""
        return self.data / "tls" / "cert.pem"

    def admin(self, *argv: str) -> Any:
        """``python -m gateway ARGV... --json`` against its admin listener: the reply."""
        done = subprocess.run(
            [
                sys.executable, "-m", "gateway", *argv, "--json",
                "--url", f"wss://localhost:{self.ports['admin']}/api",
                "--data-dir", str(self.data),
            ],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"gateway {' '.join(argv)} exited {done.returncode}: {done.stderr}")
        return json.loads(done.stdout)


@contextmanager
def gateway_process(
    folder: Path,
    listeners: Mapping[str, tuple[str, str]],
    settings: str = "",
    *,
    profile: Path | None = None,
    cpus: Collection[int] | None = None,
    address: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
) -> Iterator[GatewayProcess]:
    """``python -m gateway serve`` with data in ``folder / "data"``, until the block ends
    (SIGTERM, then SIGKILL after 60 s). ``listeners``: name -> (protocol, tls), each on a free
    port of ``address`` (or the one ``ports`` names for it), plus ``admin`` on a free port of
    127.0.0.1 (where the admin commands reach it as ``localhost``); ``settings``: more TOML
    after them. ``profile``: run it under cProfile, the stats written there on exit (the trio
    thread only). ``cpus``: start it under ``taskset -c`` with these CPUs (``[server] workers
    = "auto"`` counts them). The block starts once every listener answers and, with protocol
    workers, once the supervisor logged ``event=supervisor-ready`` (the journal and every
    worker serve)."""
    data = folder / "data"
    given = ports or {}
    addresses = {**{name: address for name in listeners}, "admin": "127.0.0.1"}
    ports = {name: given.get(name) or free_port(addresses[name]) for name in addresses}
    kinds = {**listeners, "admin": ("admin", "implicit")}
    config = folder / "gateway.toml"
    config.write_text(
        f'data_dir = "{data}"\nhostname = "localhost"\nmail_domain = "localhost"\n'
        + "".join(
            f'[[listeners]]\nname = "{name}"\nprotocol = "{protocol}"\nport = {ports[name]}\n'
            f'tls = "{tls}"\naddress = "{addresses[name]}"\n'
            for name, (protocol, tls) in kinds.items()
        )
        + settings
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_ADMIN_PASSWORD"] = secrets.token_urlsafe(18)
    log_path = folder / "gateway.log"
    runner = ["-m", "cProfile", "-o", str(profile)] if profile else []
    taskset = ["taskset", "-c", cpu_list(cpus)] if cpus else []
    argv = [*taskset, sys.executable, *runner, "-m", "gateway", "serve", "--config", str(config)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        for name, port in ports.items():
            try:
                wait_for_port(addresses[name], port, 60)
            except TimeoutError:
                raise SystemExit(
                    f"the gateway's {name} listener did not come up:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                ) from None
        _wait_until_ready(process, log_path)
        yield GatewayProcess(process, data, dict(ports), env, log_path, config, address)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """With a supervisor (it logs ``event=child-started`` for the journal before the journal
    listens), wait for its ``event=supervisor-ready``: every worker then serves."""
    deadline = time.monotonic() + 60
    while "event=child-started" in (text := log_path.read_text(errors="replace")):
        if "event=supervisor-ready" in text:
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the gateway's workers did not start:\n{text[-3000:]}")
        time.sleep(0.05)


def gateway_check(corpus: Corpus) -> Callable[[int, bytes], None]:
    """A check of what a POP3 client retrieved from the gateway: message ``n`` of ``corpus``
    as SMTP delivered it, behind the gateway's ``Received:`` field (SPEC.md section 14);
    ProtocolError if not."""

    def check(n: int, message: bytes) -> None:
        original = corpus.message(n)
        extra = len(message) - len(original)
        if not (
            message.endswith(original) and message.startswith(b"Received: ") and 0 < extra < 2048
        ):
            raise ProtocolError(f"gateway: message {n} differs from what was sent")

    return check


def workers_setting(workers: int | None) -> str:
    """The TOML that runs ``workers`` protocol workers (None: the gateway's default)."""
    return f"[server]\nworkers = {workers}\n" if workers is not None else ""


def create_mailbox(gateway: GatewayProcess, name: str) -> tuple[str, str]:
    """A new mailbox (``gateway mailbox create NAME --json``, the admin API): (id, password)."""
    created = gateway.admin("mailbox", "create", name)
    return str(created["mailbox"]["mailbox_id"]), str(created["password"])


def mailbox_counts(gateway: GatewayProcess) -> dict[str, tuple[int, int]]:
    """{mailbox id: (messages, plaintext octets)} from ``gateway mailbox list --json``."""
    listed = gateway.admin("mailbox", "list")
    return {
        str(m["mailbox_id"]): (int(m["messages"]), int(m["bytes"])) for m in listed["mailboxes"]
    }
