"""Store benchmark (issue 14, "Ten million messages on one node"): fill one data folder with
many messages, then measure what a gateway serving it costs.

Theory of operation
-------------------
**Fill.** The data folder is ``DIR/data`` and stays there between runs. A small state file
beside it, ``DIR/state.json`` (mode 0600), names the mailboxes and holds their passwords in the
clear: it is a bench folder, never a real one. The fill opens the folder in this process with
the public archive API (``Archive.open``), creates the mailboxes it lacks (Argon2id at the
smallest legal cost, as the tests do: only creation and unlock use it), and tops every mailbox
up to its share: mailbox 0, the *big* one, gets ``--big-mailbox`` messages, the others share
the rest evenly. What a mailbox already holds is read from the archive itself
(``Archive.messages``), not from the state file, so a fill cut by Ctrl-C, SIGTERM or kill -9
resumes where the archive's durable messages end, and a run with a larger ``--messages`` adds
only the difference. ``--fill-tasks`` trio tasks (64) commit at once, one mailbox after the
other, so the group commit batches them; the key forge runs beside them as under ``gateway
serve``. The messages are ``_common.Corpus``'s: realistic headers and base64 lines of random
bytes (zstd keeps about 76 % of them), exactly ``--size`` octets, distinct per message.
``--fill-via smtp`` sends them through a ``gateway serve`` with Postfix's ``smtp-source``
instead (the real intake path; every message then has the same content).

**Measure.** Each step on its own, in this order (the gateway runs with ``--workers``
protocol workers, default 1, and only an SMTP and a POP3 listener on 127.0.0.1):

1. bytes on disk per message: blocks allocated under ``DIR/data`` / messages stored;
2. the empty baseline: a ``gateway serve`` on ``DIR/empty/data`` (same mailboxes, no
   message), started, stopped, started again, its process tree's VmRSS read once idle;
3. cold starts after a clean stop: ``gateway serve`` on the filled folder, time until the
   supervisor logs ``event=supervisor-ready`` (it serves), and until the journal logs
   ``event=mailboxes-opened`` (every mailbox log open, in the background; SPEC.md 6.3);
   SIGTERM (clean stop, timed); the same again;
4. RSS of the running gateway: VmRSS summed over the tree (supervisor, journal, workers)
   once every mailbox log is open and it is idle; (filled - empty) / messages stored is the
   RSS per stored message;
5. POP3 on the big mailbox (poplib, STLS, the mailbox id and its password): login, STAT,
   LIST and UIDL read whole, the first RETR; each process's VmRSS sampled every 20 ms
   meanwhile. QUIT without DELE: nothing is deleted;
6. cold start after kill -9: SIGKILL of the supervisor while idle, every child waited for,
   started again and timed; then a clean stop;
7. ``gateway verify --data-dir DIR/data``: wall time, log bytes per second, exit status.

Run ``python tools/bench/store_bench.py --help``; tools/bench/README.md explains each number.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import poplib
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

import msgspec
import trio
from _common import (
    KIB,
    MB,
    ROOT,
    Corpus,
    Memory,
    Sampler,
    command_line,
    gateway_role,
    process_tree,
    tree_cpu,
    tree_memory,
)

from gateway.crypto import KdfParams
from gateway.events import Envelope, now
from gateway.services.archive import Archive, StoreConfig
from gateway.services.keyforge import KeyForge
from tests import peers

MIB = 1024 * KIB
# Mailbox creation and the POP3 unlock are the only users of Argon2id; at its default cost
# (64 MiB, 3 passes) 1,000 mailboxes would take minutes. The smallest legal cost, as the tests.
FAST_KDF = KdfParams(memory_kib=64, iterations=1, lanes=1)
TARGET_RSS_PER_MESSAGE = 200.0  # bytes of gateway RSS per stored message
TARGET_CLEAN_START_S = 2.0  # at 10 million messages, after a clean stop
TARGET_KILL_START_S = 10.0  # at 10 million messages, after kill -9
PROGRESS_S = 10.0  # seconds between progress lines of the fill
CREATE_TASKS = 16  # mailboxes created at once
SAMPLE_S = 0.02  # seconds between RSS samples during the POP3 step
STATE_VERSION = 1
DEFAULTS = {"messages": 10_000_000, "mailboxes": 1_000, "big_mailbox": 1_000_000}
SMALL = {"messages": 20_000, "mailboxes": 20, "big_mailbox": 10_000}
SMTP_CHUNK = 10_000  # messages per smtp-source run with --fill-via smtp


# -- the state file ------------------------------------------------------------------------


class Box(msgspec.Struct):
    """One mailbox of a bench folder. The password is chosen (and written here) before the
    mailbox is created, so a fill killed in between finds it again by its name."""

    name: str
    password: str
    mailbox_id: str = ""
    stored: int = 0  # at the last save; the archive's own count wins on resume


class FillRun(msgspec.Struct):
    """One fill session (one run of the script that added messages)."""

    started: str
    via: str  # "direct" or "smtp"
    added: int
    seconds: float
    cpu_s: float  # this process and its children (the key forge), or the gateway's tree
    peak_rss: int  # bytes: this process's VmHWM (direct), the gateway tree's (smtp)
    mailboxes_created: int
    create_s: float
    forge_served: int = 0
    forge_missed: int = 0
    interrupted: bool = False
    open_s: float = 0.0  # Archive.open of the folder as it was (direct)


class State(msgspec.Struct):
    note: str
    version: int
    size: int
    boxes: list[Box]
    fills: list[FillRun] = msgspec.field(default_factory=list)
    empty_boxes: list[Box] = msgspec.field(default_factory=list)  # the baseline folder's


NOTE = (
    "store_bench.py bench folder: test mailbox passwords in the clear (mode 0600); "
    "never use it for real mail"
)


def load_state(path: Path) -> State | None:
    if not path.exists():
        return None
    return msgspec.json.decode(path.read_bytes(), type=State)


def save_state(path: Path, state: State) -> None:
    """Write the state file atomically, mode 0600 (it holds passwords)."""
    temp = path.with_name(path.name + ".new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, msgspec.json.format(msgspec.json.encode(state), indent=1) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


# -- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    messages: int
    mailboxes: int
    big: int  # messages of mailbox 0
    size: int

    def targets(self) -> list[int]:
        """Messages per mailbox: the big one first, the rest spread evenly (the first ones
        one more when it does not divide). Every count grows with ``messages``, so a larger
        run adds exactly the difference."""
        if self.mailboxes == 1:
            return [self.messages]
        big = min(self.big, self.messages)
        rest, others = self.messages - big, self.mailboxes - 1
        return [big] + [rest // others + (1 if i < rest % others else 0) for i in range(others)]


def message_number(box: int, index: int) -> int:
    """A distinct number per message of the folder (its Message-ID and body offset)."""
    return box * 100_000_000 + index


# -- helpers -------------------------------------------------------------------------------


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def status_kib(pid: int, key: str) -> int:
    """A ``VmRSS``-like field of /proc/PID/status, KiB (0 once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else 0


def disk_usage(root: Path) -> tuple[int, int, int]:
    """(bytes allocated, apparent bytes, bytes of segment files) under ``root``."""
    allocated = apparent = segments = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
            if name.endswith(".seg"):
                segments += st.st_size
    return allocated, apparent, segments


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def drop_caches() -> None:
    """Write back and drop the page cache (root only), so the next start reads the disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# -- fill, direct --------------------------------------------------------------------------


def _envelope(box: Box, n: int) -> Envelope:
    return Envelope(
        received_at=now(),
        origin="journal",
        mail_from=f"sender{n % 97}@example.com",
        rcpt_to=(f"mbx-{box.mailbox_id}@localhost",),
        client_address="127.0.0.1",
        helo="store-bench.example.com",
    )


async def ensure_mailboxes(archive: Archive, boxes: list[Box]) -> tuple[int, float]:
    """Create the mailboxes of ``boxes`` the archive lacks (found by name), with their
    passwords; fill in every mailbox id. Returns (how many were created, seconds)."""
    by_name = {info.name: info.mailbox_id for info in archive.mailboxes()}
    missing = []
    for box in boxes:
        if box.name in by_name:
            box.mailbox_id = by_name[box.name]
        else:
            missing.append(box)
    started = time.perf_counter()
    queue = iter(missing)

    async def creator() -> None:
        for box in queue:
            info, _ = await archive.create_mailbox(
                box.name, "store_bench.py", password=box.password
            )
            box.mailbox_id = info.mailbox_id

    async with trio.open_nursery() as nursery:
        for _ in range(min(CREATE_TASKS, len(missing))):
            nursery.start_soon(creator)
    return len(missing), time.perf_counter() - started


@dataclass
class Progress:
    total: int  # messages to add this session
    added: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.perf_counter)
    last_added: int = 0
    last_time: float = field(default_factory=time.perf_counter)

    def line(self, stored_before: int) -> str:
        t = time.perf_counter()
        elapsed = t - self.started
        recent = (self.added - self.last_added) / max(1e-9, t - self.last_time)
        self.last_added, self.last_time = self.added, t
        rate = self.added / elapsed if elapsed > 0 else 0.0
        left = self.total - self.added
        eta = fmt_duration(left / rate) if rate > 0 else "?"
        rss = status_kib(os.getpid(), "VmRSS") * KIB
        return (
            f"fill: {fmt_int(stored_before + self.added)} stored ({fmt_int(self.added)} of "
            f"{fmt_int(self.total)} added) {recent:,.0f} msg/s now, {rate:,.0f} msg/s "
            f"{self.bytes / elapsed / MB if elapsed else 0:.1f} MB/s overall, "
            f"RSS {rss / MIB:,.0f} MiB, ETA {eta}"
        )


async def fill_direct(
    data: Path, state: State, state_path: Path, plan: Plan, tasks: int
) -> FillRun:
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    corpus = Corpus(plan.size, label="store")
    opening = time.perf_counter()
    archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
    open_s = time.perf_counter() - opening
    log(
        f"fill: opened the data folder in {open_s:.1f} s, RSS "
        f"{status_kib(os.getpid(), 'VmRSS') / KIB:,.0f} MiB"
    )
    try:
        created, create_s = await ensure_mailboxes(archive, state.boxes)
        if created:
            log(
                f"fill: created {created} mailboxes in {create_s:.1f} s (Argon2id at the "
                f"smallest cost: {FAST_KDF.memory_kib} KiB, {FAST_KDF.iterations} pass)"
            )
        for box in state.boxes:
            box.stored = len(archive.messages(box.mailbox_id))
        save_state(state_path, state)
        targets = plan.targets()
        have = [box.stored for box in state.boxes]
        todo = sum(max(0, t - h) for t, h in zip(targets, have, strict=True))
        stored_before = sum(have)
        log(
            f"fill: {fmt_int(stored_before)} messages stored, {fmt_int(todo)} to add "
            f"({tasks} commits at once)"
        )
        progress = Progress(todo)
        stopping = False
        work = (
            (i, j)
            for i, (target, had) in enumerate(zip(targets, have, strict=True))
            for j in range(had, target)
        )

        async def writer() -> None:
            for i, j in work:
                if stopping:
                    return
                box = state.boxes[i]
                n = message_number(i, j)
                message = archive.begin_message([box.mailbox_id])
                content = corpus.message(n)
                await message.write(content)
                await message.commit(_envelope(box, n))
                box.stored += 1
                progress.added += 1
                progress.bytes += len(content)

        async def reporter() -> None:
            while True:
                await trio.sleep(PROGRESS_S)
                log(progress.line(stored_before))
                save_state(state_path, state)

        async def signals(scope: trio.CancelScope) -> None:
            nonlocal stopping
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for signum in received:
                    if stopping:
                        log("fill: second signal: cancelling the messages in flight")
                        scope.cancel()
                        return
                    stopping = True
                    log(
                        f"fill: {signal.Signals(signum).name}: finishing the messages in "
                        "flight (again to cancel them); run again to resume"
                    )

        forge = KeyForge()
        cpu0 = tree_cpu(os.getpid())
        t0 = time.perf_counter()
        async with trio.open_nursery() as outer:
            await outer.start(forge.run)
            archive.key_forge = forge
            outer.start_soon(reporter)
            outer.start_soon(signals, outer.cancel_scope)
            async with trio.open_nursery() as nursery:
                for _ in range(max(1, min(tasks, todo))):
                    nursery.start_soon(writer)
            outer.cancel_scope.cancel()  # the reporter, the signals, the forge
        seconds = time.perf_counter() - t0
        cpu = tree_cpu(os.getpid()) - cpu0  # the forge's child, reaped, in cutime/cstime
        if todo:
            log(progress.line(stored_before))
        return FillRun(
            started=started_at,
            via="direct",
            added=progress.added,
            seconds=round(seconds, 3),
            cpu_s=round(cpu, 2),
            peak_rss=status_kib(os.getpid(), "VmHWM") * KIB,
            mailboxes_created=created,
            create_s=round(create_s, 2),
            forge_served=forge.served,
            forge_missed=forge.missed,
            interrupted=stopping,
            open_s=round(open_s, 2),
        )
    finally:
        for box in state.boxes:
            if box.mailbox_id:
                box.stored = len(archive.messages(box.mailbox_id))
        await archive.aclose()
        save_state(state_path, state)


# -- the gateway process -------------------------------------------------------------------


def write_config(folder: Path, data: Path) -> Path:
    """A configuration with an SMTP and a POP3 listener (STARTTLS/STLS) on free ports of
    127.0.0.1, the data folder, and Argon2id at the cost the mailboxes were made with (the
    gateway logs ``event=insecure-kdf`` for it)."""
    config = folder / "gateway.toml"
    config.write_text(
        f'data_dir = "{data}"\nhostname = "localhost"\nmail_domain = "localhost"\n'
        + "".join(
            f'[[listeners]]\nname = "{name}"\nprotocol = "{name}"\naddress = "127.0.0.1"\n'
            'port = 0\ntls = "starttls"\n'
            for name in ("smtp", "pop3")
        )
        + f"[store.kdf]\nmemory_kib = {FAST_KDF.memory_kib}\niterations = "
        f"{FAST_KDF.iterations}\nlanes = {FAST_KDF.lanes}\ninsecure_fast_for_tests = true\n"
    )
    return config


class Server:
    """One ``python -m gateway serve --config FILE --workers W``, its log in a file."""

    def __init__(self, config: Path, workers: int, timeout: float) -> None:
        self.config = config
        self.log_path = config.with_suffix(".log")
        self.workers = workers
        self.timeout = timeout
        self.ports: dict[str, int] = {}
        self.ready_s = 0.0
        self.started = 0.0
        self.opened_s = 0.0
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["GATEWAY_ADMIN_PASSWORD"] = secrets.token_urlsafe(18)  # no initial-password file
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, log_path: Path) -> float:
        """Start it, its output into ``log_path``; seconds until it serves: the supervisor's
        ``event=supervisor-ready`` (with ``--workers 0``, every listener's
        ``event=listening``)."""
        self.log_path = log_path
        self.ports = {}
        self.opened_s = 0.0
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)]
        argv += ["--workers", str(self.workers)]
        with self.log_path.open("wb") as out:
            started = self.started = time.perf_counter()
            self.process = subprocess.Popen(
                argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        deadline = started + self.timeout
        text = ""
        with self.log_path.open("r", errors="replace") as reader:
            while True:
                text += reader.read()
                if self._ready(text):
                    self.ready_s = time.perf_counter() - started
                    break
                if self.process.poll() is not None or time.perf_counter() > deadline:
                    self.kill()
                    raise SystemExit(
                        f"the gateway did not start ({self.log_path}):\n" + text[-3000:]
                    )
                time.sleep(0.005)
        for found in re.finditer(r"event=listening name=(\w+) .* port=(\d+)", text):
            self.ports.setdefault(found.group(1), int(found.group(2)))
        return self.ready_s

    def wait_opened(self) -> float:
        """Seconds from the start until the journal logged ``event=mailboxes-opened``."""
        deadline = time.perf_counter() + self.timeout
        while "event=mailboxes-opened" not in self.log_path.read_text(errors="replace"):
            if time.perf_counter() > deadline:
                raise SystemExit(f"the mailboxes were not opened ({self.log_path})")
            time.sleep(0.005)
        self.opened_s = time.perf_counter() - self.started
        return self.opened_s

    def _ready(self, text: str) -> bool:
        if self.workers > 0:
            return "event=supervisor-ready" in text
        return len(set(re.findall(r"event=listening name=(\w+)", text))) >= 2

    def stop(self) -> tuple[float, int]:
        """SIGTERM and wait: (seconds to exit, exit status)."""
        assert self.process is not None
        started = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SystemExit(f"the gateway did not stop in {self.timeout:.0f} s") from None
        return time.perf_counter() - started, status

    def kill9(self) -> tuple[float, int]:
        """SIGKILL of the supervisor, then wait until every process of its tree is gone
        (the children see their lifeline end and exit). (seconds, children waited for)."""
        assert self.process is not None
        children = [pid for pid in process_tree(self.pid) if pid != self.pid]
        started = time.perf_counter()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=self.timeout)
        deadline = started + self.timeout
        while any(alive(pid) for pid in children):
            if time.perf_counter() > deadline:
                raise SystemExit(f"children {children} outlived the supervisor's kill -9")
            time.sleep(0.005)
        return time.perf_counter() - started, len(children)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            for pid in process_tree(self.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            self.process.wait()

    def memory(self) -> list[Memory]:
        return tree_memory(self.pid)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def role_of(pid: int, root: int, root_name: str) -> str:
    if pid == root:
        return root_name
    return gateway_role(command_line(pid)) or "?"


class RssSampler(Sampler):
    """Each process's largest VmRSS in a process tree, sampled every ``SAMPLE_S`` in a
    thread (by role: supervisor, journal, worker-N), and the largest sum."""

    def __init__(self, root: int, root_name: str = "supervisor") -> None:
        self.root = root
        self.root_name = root_name  # with --workers 0: "gateway", all in one
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.interval = SAMPLE_S
        super().__init__()

    def sample(self) -> None:
        total = 0
        for pid in process_tree(self.root):
            rss = status_kib(pid, "VmRSS") * KIB
            role = role_of(pid, self.root, self.root_name)
            self.peak[role] = max(self.peak.get(role, 0), rss)
            total += rss
        self.peak_total = max(self.peak_total, total)


# -- fill through SMTP ---------------------------------------------------------------------


def fill_smtp(
    folder: Path, state: State, state_path: Path, plan: Plan, args: argparse.Namespace
) -> FillRun:
    """Top the mailboxes up through ``gateway serve``'s SMTP listener with smtp-source
    (``--workers`` protocol workers, 20 sessions); the counts come from the archive."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    data = folder / "data"

    async def prepare() -> tuple[int, float]:
        archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
        try:
            created = await ensure_mailboxes(archive, state.boxes)
            for box in state.boxes:
                box.stored = len(archive.messages(box.mailbox_id))
            return created
        finally:
            await archive.aclose()

    created, create_s = trio.run(prepare)
    save_state(state_path, state)
    message_file = folder / "smtp-message.eml"
    message_file.write_bytes(Corpus(plan.size, label="store").message(0))
    server = Server(write_config(folder, data), max(1, args.workers), args.start_timeout)
    server.start(folder / "logs" / "fill-smtp.log")
    todo = [max(0, t - b.stored) for t, b in zip(plan.targets(), state.boxes, strict=True)]
    log(
        f"fill via smtp: {fmt_int(sum(todo))} messages to send (smtp-source, 20 sessions, "
        f"port {server.ports['smtp']})"
    )
    cpu0, t0, sent = tree_cpu(server.pid), time.perf_counter(), 0
    interrupted = False

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM as Ctrl-C: stop the gateway, count, save

    previous = signal.signal(signal.SIGTERM, terminate)
    sampler = RssSampler(server.pid)
    try:
        with sampler:
            for box, count in zip(state.boxes, todo, strict=True):
                for offset in range(0, count, SMTP_CHUNK):
                    chunk = min(SMTP_CHUNK, count - offset)
                    peers.smtp_source(
                        "127.0.0.1",
                        server.ports["smtp"],
                        sessions=20,
                        messages=chunk,
                        to=f"mbx-{box.mailbox_id}@localhost",
                        message_file=message_file,
                        counter=False,
                        timeout=3600,
                    )
                    sent += chunk
                    elapsed = time.perf_counter() - t0
                    log(f"fill via smtp: {fmt_int(sent)} sent, {sent / elapsed:,.0f} msg/s")
    except KeyboardInterrupt:
        interrupted = True
        log("fill via smtp: interrupted; run again to resume")
    finally:
        signal.signal(signal.SIGTERM, previous)
        seconds = time.perf_counter() - t0
        cpu = tree_cpu(server.pid) - cpu0
        try:
            server.stop()
        finally:
            server.kill()

    async def recount() -> None:
        archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
        try:
            for box in state.boxes:
                box.stored = len(archive.messages(box.mailbox_id))
        finally:
            await archive.aclose()

    before = sum(b.stored for b in state.boxes)
    trio.run(recount)
    save_state(state_path, state)
    return FillRun(
        started=started_at,
        via="smtp",
        added=sum(b.stored for b in state.boxes) - before,
        seconds=round(seconds, 3),
        cpu_s=round(cpu, 2),
        peak_rss=sampler.peak_total,
        mailboxes_created=created,
        create_s=round(create_s, 2),
        interrupted=interrupted,
    )


# -- the empty baseline --------------------------------------------------------------------


def ensure_empty(folder: Path, state: State, state_path: Path, mailboxes: int) -> None:
    """``folder/empty/data``: the same number of mailboxes, no message (made once, kept)."""
    data = folder / "empty" / "data"
    if len(state.empty_boxes) != mailboxes or not (data / "control").is_dir():
        shutil.rmtree(folder / "empty", ignore_errors=True)
        state.empty_boxes = [
            Box(f"store-bench-empty-{i:05d}", secrets.token_urlsafe(12)) for i in range(mailboxes)
        ]
    (folder / "empty").mkdir(mode=0o700, exist_ok=True)

    async def create() -> tuple[int, float]:
        archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
        try:
            return await ensure_mailboxes(archive, state.empty_boxes)
        finally:
            await archive.aclose()

    created, seconds = trio.run(create)
    if created:
        log(f"empty baseline: created {created} mailboxes in {seconds:.1f} s")
    save_state(state_path, state)


# -- measure -------------------------------------------------------------------------------


@dataclass
class Pop3Result:
    mailbox_id: str
    expected: int
    connect_ms: float = 0.0  # TCP connect and the greeting
    stls_ms: float = 0.0
    login_ms: float = 0.0  # USER + PASS (Argon2id, the maildrop listed, the lock)
    login_reply: str = ""
    stat_ms: float = 0.0
    stat_count: int = 0
    stat_octets: int = 0
    list_first_ms: float = 0.0  # LIST sent until its status line came back
    list_ms: float = 0.0  # ... until its final "."
    list_lines: int = 0
    list_octets: int = 0  # the sizes LIST gave, added up
    uidl_first_ms: float = 0.0
    uidl_ms: float = 0.0
    uidl_lines: int = 0
    retr_ms: float = 0.0
    retr_octets: int = 0
    quit_ms: float = 0.0
    rss_before: dict[str, int] = field(default_factory=dict)  # bytes per process role
    rss_peak: dict[str, int] = field(default_factory=dict)
    hwm_after: dict[str, int] = field(default_factory=dict)


def read_listing(pop: poplib.POP3, command: str) -> tuple[float, float, int, int]:
    """Send a multi-line command and read its reply in 256 KiB pieces without keeping it:
    (ms to the status line, ms to the final ".", lines, sum of the second field)."""
    started = time.perf_counter()
    pop.sock.sendall(command.encode() + b"\r\n")
    reader = cast(io.BufferedReader, pop.file)  # poplib's makefile("rb") after STLS
    status = reader.readline()
    first = time.perf_counter() - started
    if not status.startswith(b"+OK"):
        raise SystemExit(f"{command}: {status!r}")
    lines = total = 0
    tail = b""
    while True:
        piece = reader.read1(256 * KIB)
        if not piece:
            raise SystemExit(f"{command}: the connection ended in the listing")
        text = tail + piece
        done = text.endswith(b"\r\n.\r\n") or text == b".\r\n"
        cut = text.rfind(b"\r\n") + 2
        whole, tail = text[:cut], text[cut:]
        if done:
            whole = whole[: -len(b".\r\n")]
        for line in whole.splitlines():
            lines += 1
            _, _, value = line.partition(b" ")
            if value.isdigit():
                total += int(value)
        if done:
            break
    return first * 1000, (time.perf_counter() - started) * 1000, lines, total


def pop3_step(server: Server, box: Box, expected: int) -> Pop3Result:
    result = Pop3Result(box.mailbox_id, expected)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the gateway's self-signed certificate
    result.rss_before = {m.name: m.rss for m in server.memory()}
    with RssSampler(server.pid, "supervisor" if server.workers else "gateway") as sampler:
        t = time.perf_counter()
        pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=3600)
        result.connect_ms = (time.perf_counter() - t) * 1000
        try:
            t = time.perf_counter()
            pop.stls(context)
            result.stls_ms = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            pop.user(box.mailbox_id)
            result.login_reply = pop.pass_(box.password).decode(errors="replace")
            result.login_ms = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            result.stat_count, result.stat_octets = pop.stat()
            result.stat_ms = (time.perf_counter() - t) * 1000
            first, total, lines, octets = read_listing(pop, "LIST")
            result.list_first_ms, result.list_ms = first, total
            result.list_lines, result.list_octets = lines, octets
            first, total, lines, _ = read_listing(pop, "UIDL")
            result.uidl_first_ms, result.uidl_ms, result.uidl_lines = first, total, lines
            if result.stat_count:
                t = time.perf_counter()
                _, body, octets = pop.retr(1)
                result.retr_ms = (time.perf_counter() - t) * 1000
                result.retr_octets = sum(len(line) + 2 for line in body)
            t = time.perf_counter()
            pop.quit()  # nothing marked deleted: nothing is deleted
            result.quit_ms = (time.perf_counter() - t) * 1000
        except BaseException:
            pop.close()
            raise
    result.rss_peak = dict(sampler.peak)
    result.hwm_after = {m.name: m.hwm for m in server.memory()}
    return result


@dataclass
class Measurement:
    dir: str
    messages_requested: int
    mailboxes: int
    big_mailbox_requested: int
    size: int
    workers: int
    page_cache: str  # "warm" or "dropped before each start"
    gateway_code: str  # the commit the gateway ran from, and whether gateway/ had changes
    messages_stored: int = 0
    big_mailbox_stored: int = 0
    fill: dict[str, Any] = field(default_factory=dict)
    disk_allocated: int = 0
    disk_apparent: int = 0
    segment_bytes: int = 0
    disk_bytes_per_message: float = 0.0
    empty_start_s: float = 0.0
    empty_opened_s: float = 0.0
    rss_empty: int = 0
    rss_empty_processes: dict[str, int] = field(default_factory=dict)
    clean_start_1_s: float = 0.0
    clean_opened_1_s: float = 0.0  # every mailbox log open (in the background)
    clean_stop_s: float = 0.0
    clean_stop_status: int = 0
    clean_start_2_s: float = 0.0
    clean_opened_2_s: float = 0.0
    rss_filled: int = 0
    rss_filled_processes: dict[str, int] = field(default_factory=dict)
    pss_filled: int = 0
    hwm_filled_processes: dict[str, int] = field(default_factory=dict)  # VmHWM once idle
    hwm_start_1: dict[str, int] = field(default_factory=dict)  # VmHWM at the first ready
    rss_per_message: float = 0.0
    pop3: dict[str, Any] = field(default_factory=dict)
    kill9_children_gone_s: float = 0.0
    kill9_children: int = 0  # processes that had to exit after the supervisor
    kill9_start_s: float = 0.0
    kill9_opened_s: float = 0.0
    rss_after_kill9: int = 0
    final_stop_s: float = 0.0
    final_stop_status: int = 0
    verify_s: float = 0.0
    verify_status: int = -1
    verify_summary: str = ""
    verify_log_bytes: int = 0
    verify_messages: int = 0
    verify_mb_per_s: float = 0.0
    verify_peak_rss: int = 0
    verify_problems: list[str] = field(default_factory=list)


def gateway_code() -> str:
    """``<commit>`` of the repository, `` (with uncommitted changes in gateway/)`` if so."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--", "gateway")
    except OSError:
        return "unknown"
    return (commit or "unknown") + (" (with uncommitted changes in gateway/)" if changed else "")


def settle_then_memory(server: Server, settle: float) -> list[Memory]:
    time.sleep(settle)
    return server.memory()


def measure(folder: Path, state: State, state_path: Path, args: argparse.Namespace) -> Measurement:
    data = folder / "data"
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    stored = [b.stored for b in state.boxes]
    m = Measurement(
        dir=str(folder),
        messages_requested=args.messages,
        mailboxes=len(state.boxes),
        big_mailbox_requested=args.big_mailbox,
        size=state.size,
        workers=args.workers,
        page_cache="dropped before each start" if args.drop_caches else "warm",
        gateway_code=gateway_code(),
        messages_stored=sum(stored),
        big_mailbox_stored=stored[0],
    )
    if state.fills:
        m.fill = fill_summary(state.fills)

    def before_start() -> None:
        if args.drop_caches:
            drop_caches()

    # 1. bytes on disk
    log("measure 1/7: bytes on disk")
    m.disk_allocated, m.disk_apparent, m.segment_bytes = disk_usage(data)
    m.disk_bytes_per_message = m.disk_allocated / max(1, m.messages_stored)

    # 2. the empty baseline
    log(f"measure 2/7: RSS of a gateway on an empty folder ({len(state.boxes)} mailboxes)")
    ensure_empty(folder, state, state_path, len(state.boxes))
    empty = Server(
        write_config(folder / "empty", folder / "empty" / "data"), args.workers, args.start_timeout
    )
    try:
        empty.start(logs / "empty-1.log")  # the first start makes the certificate, the admin
        empty.stop()  # account: not measured
        before_start()
        m.empty_start_s = empty.start(logs / "empty-2.log")
        m.empty_opened_s = empty.wait_opened()
        memory = settle_then_memory(empty, args.settle)
        empty.stop()
    finally:
        empty.kill()
    m.rss_empty = sum(p.rss for p in memory)
    m.rss_empty_processes = {p.name: p.rss for p in memory}
    log(
        f"  ready in {m.empty_start_s:.2f} s, opened {m.empty_opened_s:.2f} s; "
        f"RSS {m.rss_empty / MIB:,.1f} MiB"
    )

    # 3. cold starts after a clean stop
    server = Server(write_config(folder, data), args.workers, args.start_timeout)
    try:
        log(f"measure 3/7: cold start, {fmt_int(m.messages_stored)} messages")
        before_start()
        m.clean_start_1_s = server.start(logs / "start-1.log")
        m.hwm_start_1 = {p.name: p.hwm for p in server.memory()}
        m.clean_opened_1_s = server.wait_opened()
        log(f"  ready in {m.clean_start_1_s:.2f} s, opened {m.clean_opened_1_s:.2f} s; clean stop")
        m.clean_stop_s, m.clean_stop_status = server.stop()
        log(f"  stopped in {m.clean_stop_s:.2f} s (exit {m.clean_stop_status}); start again")
        before_start()
        m.clean_start_2_s = server.start(logs / "start-2.log")
        m.clean_opened_2_s = server.wait_opened()
        log(f"  ready in {m.clean_start_2_s:.2f} s, opened {m.clean_opened_2_s:.2f} s")

        # 4. RSS, filled
        log(f"measure 4/7: RSS once idle ({args.settle:g} s after ready)")
        memory = settle_then_memory(server, args.settle)
        m.rss_filled = sum(p.rss for p in memory)
        m.pss_filled = sum(p.pss for p in memory)
        m.rss_filled_processes = {p.name: p.rss for p in memory}
        m.hwm_filled_processes = {p.name: p.hwm for p in memory}
        m.rss_per_message = (m.rss_filled - m.rss_empty) / max(1, m.messages_stored)
        log(f"  RSS {m.rss_filled / MIB:,.1f} MiB: {m.rss_per_message:,.1f} B per message")

        # 5. POP3
        log(f"measure 5/7: POP3 on the big mailbox ({fmt_int(stored[0])} messages)")
        m.pop3 = asdict(pop3_step(server, state.boxes[0], stored[0]))

        # 6. kill -9
        log("measure 6/7: kill -9 of the supervisor, idle; start again")
        m.kill9_children_gone_s, m.kill9_children = server.kill9()
        before_start()
        m.kill9_start_s = server.start(logs / "start-after-kill9.log")
        m.kill9_opened_s = server.wait_opened()
        log(f"  ready in {m.kill9_start_s:.2f} s, opened {m.kill9_opened_s:.2f} s")
        m.rss_after_kill9 = sum(p.rss for p in settle_then_memory(server, args.settle))
        m.final_stop_s, m.final_stop_status = server.stop()
    finally:
        server.kill()

    # 7. verify
    log("measure 7/7: gateway verify")
    verify(data, logs / "verify.log", m)
    return m


def verify(data: Path, log_path: Path, m: Measurement) -> None:
    with log_path.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "verify", "--data-dir", str(data)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        out = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        m.verify_s = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    m.verify_status = process.returncode
    m.verify_peak_rss = usage.ru_maxrss * KIB
    lines = out.splitlines()
    m.verify_summary = lines[0] if lines else ""
    m.verify_problems = [line for line in lines if line.startswith("PROBLEM")][:20]
    found = re.search(r"log bytes (\d+)", out)
    m.verify_log_bytes = int(found.group(1)) if found else 0
    found = re.search(r"messages (\d+)", out)
    m.verify_messages = int(found.group(1)) if found else 0
    m.verify_mb_per_s = m.verify_log_bytes / MB / m.verify_s if m.verify_s else 0.0


def fill_summary(fills: list[FillRun]) -> dict[str, Any]:
    """The last fill session that added messages, and every session together."""
    last = next((f for f in reversed(fills) if f.added), fills[-1])
    added = sum(f.added for f in fills)
    seconds = sum(f.seconds for f in fills)
    cpu = sum(f.cpu_s for f in fills)
    return {
        "last": msgspec.to_builtins(last),
        "sessions": sum(1 for f in fills if f.added),
        "added": added,
        "seconds": round(seconds, 2),
        "cpu_s": round(cpu, 2),
        "messages_per_s": added / seconds if seconds else 0.0,
    }


# -- report --------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "met" if value < target else "NOT met"


def render(m: Measurement, out: TextIO) -> None:
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, value: str, target: str = "", result: str = "") -> None:
        rows.append((label, value, target, result))

    if m.fill:
        last = m.fill["last"]
        rate = last["added"] / last["seconds"] if last["seconds"] else 0.0
        mbs = rate * m.size / MB
        cpu_ms = 1000 * last["cpu_s"] / last["added"] if last["added"] else 0.0
        row(
            f"fill ({last['via']}, last session)",
            f"{fmt_int(last['added'])} msgs in {last['seconds']:.1f} s: {rate:,.0f} msg/s, "
            f"{mbs:.1f} MB/s, CPU {last['cpu_s']:.1f} s ({cpu_ms:.2f} ms/msg), "
            f"peak RSS {last['peak_rss'] / MIB:,.0f} MiB",
        )
        if last["via"] == "direct":
            row(
                "  key forge",
                f"{fmt_int(last['forge_served'])} data keys from the forge, "
                f"{fmt_int(last['forge_missed'])} sealed inline",
            )
        if m.fill["sessions"] > 1:
            row(
                "fill (all sessions)",
                f"{m.fill['sessions']} sessions, {fmt_int(m.fill['added'])} msgs in "
                f"{fmt_duration(m.fill['seconds'])}: {m.fill['messages_per_s']:,.0f} msg/s",
            )
    row(
        "messages stored",
        f"{fmt_int(m.messages_stored)} (asked {fmt_int(m.messages_requested)}"
        f"), big mailbox {fmt_int(m.big_mailbox_stored)}",
    )
    row(
        "bytes on disk per message",
        f"{m.disk_bytes_per_message:,.0f} B ({m.disk_allocated / MIB:,.1f} MiB allocated, "
        f"{m.segment_bytes / MIB:,.1f} MiB of segments, message {fmt_int(m.size)} B)",
    )
    target = f"< {TARGET_CLEAN_START_S:.0f} s at 10M"
    row(
        "cold start after clean stop #1",
        f"{m.clean_start_1_s:.2f} s",
        target,
        verdict(m.clean_start_1_s, TARGET_CLEAN_START_S),
    )
    row("every mailbox log open, #1 / #2", f"{m.clean_opened_1_s:.2f} / {m.clean_opened_2_s:.2f} s")
    row("clean stop (SIGTERM to exit)", f"{m.clean_stop_s:.2f} s, exit {m.clean_stop_status}")
    row(
        "cold start after clean stop #2",
        f"{m.clean_start_2_s:.2f} s",
        target,
        verdict(m.clean_start_2_s, TARGET_CLEAN_START_S),
    )
    row(
        "cold start, empty folder",
        f"{m.empty_start_s:.2f} s, every log open {m.empty_opened_s:.2f} s "
        f"({m.mailboxes} mailboxes)",
    )
    row(
        "RSS idle, filled / empty",
        f"{m.rss_filled / MIB:,.1f} / {m.rss_empty / MIB:,.1f} MiB ("
        + ", ".join(f"{k} {v / MIB:,.1f}" for k, v in m.rss_filled_processes.items())
        + ")",
    )
    row(
        "RSS per stored message",
        f"{m.rss_per_message:,.1f} B",
        f"< {TARGET_RSS_PER_MESSAGE:.0f} B",
        verdict(m.rss_per_message, TARGET_RSS_PER_MESSAGE),
    )
    p = m.pop3
    if p:
        row(
            f"POP3 login (big mailbox, {fmt_int(p['expected'])} msgs)",
            f"{p['login_ms']:,.1f} ms (connect {p['connect_ms']:.1f}, STLS {p['stls_ms']:.1f})",
        )
        row(
            "POP3 STAT",
            f"{p['stat_ms']:,.1f} ms: {fmt_int(p['stat_count'])} messages, "
            f"{fmt_int(p['stat_octets'])} octets",
        )
        row(
            "POP3 LIST (whole)",
            f"{p['list_ms']:,.1f} ms (status line "
            f"{p['list_first_ms']:,.1f} ms), {fmt_int(p['list_lines'])} lines",
        )
        row(
            "POP3 UIDL (whole)",
            f"{p['uidl_ms']:,.1f} ms (status line "
            f"{p['uidl_first_ms']:,.1f} ms), {fmt_int(p['uidl_lines'])} lines",
        )
        row("POP3 first RETR", f"{p['retr_ms']:,.1f} ms, {fmt_int(p['retr_octets'])} octets")
        for role in sorted(p["rss_peak"]):
            if role == "supervisor":
                continue
            before = p["rss_before"].get(role, 0)
            peak = p["rss_peak"][role]
            row(
                f"  {role} RSS during POP3",
                f"peak {peak / MIB:,.1f} MiB (idle {before / MIB:,.1f}, "
                f"+{(peak - before) / MIB:,.1f}); VmHWM {p['hwm_after'].get(role, 0) / MIB:,.1f}",
            )
    row(
        "kill -9: children gone",
        f"{m.kill9_children} in {m.kill9_children_gone_s:.2f} s after the supervisor's SIGKILL",
    )
    row(
        "cold start after kill -9",
        f"{m.kill9_start_s:.2f} s, every log open {m.kill9_opened_s:.2f} s",
        f"< {TARGET_KILL_START_S:.0f} s at 10M (every log open)",
        verdict(m.kill9_opened_s, TARGET_KILL_START_S),
    )
    row(
        "gateway verify",
        f"{m.verify_s:.2f} s, {m.verify_mb_per_s:,.1f} MB/s of log, exit {m.verify_status}, "
        f"peak RSS {m.verify_peak_rss / MIB:,.0f} MiB",
    )
    print(
        f"store_bench: {fmt_int(m.messages_stored)} messages of {fmt_int(m.size)} octets in "
        f"{m.mailboxes} mailboxes, gateway --workers {m.workers}, page cache {m.page_cache}"
        f"\n  folder {m.dir}, gateway code {m.gateway_code}",
        file=out,
    )
    width = max(len(r[0]) for r in rows) + 2
    for label, value, target, result in rows:
        extra = f"   [target {target}: {result}]" if target else ""
        print(f"{label:<{width}}{value}{extra}", file=out)
    print(f"  verify: {m.verify_summary}", file=out)
    if m.verify_messages != m.messages_stored:
        print(
            f"  warning: verify counts {fmt_int(m.verify_messages)} messages, the state file "
            f"{fmt_int(m.messages_stored)} (a fill killed since? run the fill again)",
            file=out,
        )
    for problem in m.verify_problems:
        print(f"  {problem}", file=out)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fill one data folder with many messages (resumable), then measure the "
        "gateway on it: fill rate, bytes on disk, RSS per stored message, cold starts after a "
        "clean stop and after kill -9, POP3 on the big mailbox, gateway verify."
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="bench folder (default /var/tmp/store_bench-<messages>x<size>); kept between runs",
    )
    parser.add_argument("--messages", type=int, help="messages in all (default 10,000,000)")
    parser.add_argument("--mailboxes", type=int, help="mailboxes (default 1,000)")
    parser.add_argument(
        "--big-mailbox",
        type=int,
        help="messages of mailbox 0, the POP3 maildrop (default 1,000,000)",
    )
    parser.add_argument("--size", type=int, default=1024, help="octets per message (1024)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fill-only", action="store_true", help="fill, do not measure")
    mode.add_argument("--measure-only", action="store_true", help="measure, do not fill")
    parser.add_argument(
        "--workers", type=int, default=1, help="gateway protocol workers for the measurements (1)"
    )
    parser.add_argument(
        "--fill-tasks",
        type=int,
        default=64,
        help="messages committed at once by the direct fill (64)",
    )
    parser.add_argument(
        "--fill-via",
        choices=("direct", "smtp"),
        default="direct",
        help="direct: the archive API in this process; smtp: smtp-source to a gateway serve",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="20,000 messages over 20 mailboxes, big mailbox 10,000 (CI)",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds idle after ready before RSS is read (2)"
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=3600.0,
        help="seconds a start or stop may take (3600)",
    )
    parser.add_argument(
        "--drop-caches", action="store_true", help="drop the page cache before every start (root)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON (the table to stderr)")
    args = parser.parse_args(argv)
    preset = SMALL if args.small else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.messages < 1 or args.mailboxes < 1 or args.big_mailbox < 1:
        parser.error("--messages, --mailboxes and --big-mailbox must be at least 1")
    if args.mailboxes > 1 and args.big_mailbox > args.messages:
        args.big_mailbox = args.messages
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    if args.dir is None:
        args.dir = Path(f"/var/tmp/store_bench-{args.messages}x{args.size}")
    return args


def open_state(folder: Path, args: argparse.Namespace) -> State:
    """The folder's state, made or extended to ``--mailboxes`` mailboxes."""
    path = folder / "state.json"
    state = load_state(path)
    if state is None:
        if (folder / "data").exists():
            raise SystemExit(f"{folder}/data exists without {path}: not a bench folder")
        state = State(note=NOTE, version=STATE_VERSION, size=args.size, boxes=[])
    if state.size != args.size:
        raise SystemExit(
            f"{folder} holds messages of {state.size} octets, not {args.size}: use another --dir"
        )
    if len(state.boxes) > args.mailboxes:
        raise SystemExit(f"{folder} has {len(state.boxes)} mailboxes; ask for at least as many")
    for i in range(len(state.boxes), args.mailboxes):
        state.boxes.append(Box(f"store-bench-{i:05d}", secrets.token_urlsafe(18)))
    save_state(path, state)
    return state


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder: Path = args.dir.resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    state_path = folder / "state.json"
    if args.measure_only and not state_path.exists():
        raise SystemExit(f"{folder} has not been filled (no state.json)")
    state = open_state(folder, args)
    plan = Plan(args.messages, args.mailboxes, args.big_mailbox, args.size)
    interrupted = False
    if not args.measure_only:
        log(
            f"fill: {fmt_int(plan.messages)} messages of {fmt_int(plan.size)} octets in "
            f"{plan.mailboxes} mailboxes (big mailbox {fmt_int(plan.targets()[0])}) at "
            f"{folder}"
        )
        if args.fill_via == "smtp":
            run = fill_smtp(folder, state, state_path, plan, args)
        else:
            run = trio.run(fill_direct, folder / "data", state, state_path, plan, args.fill_tasks)
        if run.added or run.mailboxes_created:  # a session that did something
            state.fills.append(run)
        save_state(state_path, state)
        interrupted = run.interrupted
        stored = sum(b.stored for b in state.boxes)
        log(
            f"fill: done: {fmt_int(run.added)} added in {run.seconds:.1f} s "
            f"({run.added / run.seconds if run.seconds else 0:,.0f} msg/s); "
            f"{fmt_int(stored)} stored" + (" (interrupted)" if interrupted else "")
        )
    if args.fill_only or interrupted:
        if args.json:
            print(
                json.dumps(
                    {
                        "dir": str(folder),
                        "fills": msgspec.to_builtins(state.fills),
                        "stored": [b.stored for b in state.boxes],
                    },
                    indent=2,
                )
            )
        return 130 if interrupted else 0
    measurement = measure(folder, state, state_path, args)
    result = json.dumps(asdict(measurement), indent=2)
    (folder / "results.json").write_text(result + "\n")
    render(measurement, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
