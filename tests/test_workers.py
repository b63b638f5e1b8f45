"""A gateway of a supervisor, one journal and protocol workers, as `gateway serve` runs it
(SPEC.md 16), against smtplib and poplib: load spread over workers, a maildrop locked across
them, kill -9 of a worker, of the journal and of the supervisor, SIGHUP, SIGTERM, and bad
frames on the journal's socket."""

from __future__ import annotations

import json
import os
import poplib
import re
import signal
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.events import MailboxDeleted, now
from gateway.servers.load import GONE, WorkerLoads
from gateway.services.archive import Archive, StoreConfig
from gateway.store import PROTOCOL_VERSION
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF
from .gateway_helpers import strip_received

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
data_dir = "{data}"
shutdown_grace = 5.0
[[listeners]]
name = "smtp"
protocol = "smtp"
port = 0
[[listeners]]
name = "pop3"
protocol = "pop3"
port = 0
[[listeners]]
name = "admin"
protocol = "admin"
port = 0
tls = "implicit"
[store]
segment_bytes = 262144
min_free_bytes = 0
[store.kdf]
memory_kib = 64
iterations = 1
lanes = 1
insecure_fast_for_tests = true
"""


@dataclass
class Served:
    process: subprocess.Popen[str]
    ports: dict[str, int]
    lines: list[str] = field(default_factory=list)

    def children(self) -> dict[str, int]:
        """The supervisor's children now: name (journal, worker-N) -> pid."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) != self.process.pid:
                continue
            if b"journal" in args and b"--role" in args:
                found["journal"] = int(entry.name)
            elif b"--name" in args:
                found[args[args.index(b"--name") + 1].decode()] = int(entry.name)
        return found

    def journal_socket(self) -> Path:
        pid = self.children()["journal"]
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return Path(args[args.index(b"--journal-socket") + 1].decode())

    def wait_for_line(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r}:\n" + "".join(self.lines[-40:]))


@contextmanager
def serve(tmp_path: Path, workers: int = 2, config_text: str | None = None) -> Iterator[Served]:
    """``gateway serve --workers N`` on ``config_text`` (CONFIG by default; {data} is
    tmp_path/data) until the block ends; ready once it serves."""
    config = tmp_path / "gateway.toml"
    config.write_text((config_text or CONFIG).format(data=tmp_path / "data"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--workers",
            str(workers),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GATEWAY_ADMIN_PASSWORD": "an admin password for tests"},
    )
    served = Served(process, {})
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: served.lines.extend(process.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        served.wait_for_line(
            r"event=supervisor-ready" if workers else r"event=listening name=admin"
        )
        for line in served.lines:
            match = re.search(r"event=listening name=(\w+) .* port=(\d+)", line)
            if match:
                served.ports.setdefault(match.group(1), int(match.group(2)))
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=10)
        process.stderr.close()


@contextmanager
def stopping(stop: threading.Event) -> Iterator[None]:
    """Client threads stop whatever happens to the test (else pytest never exits)."""
    try:
        yield
    finally:
        stop.set()


async def create_mailbox(data: Path) -> tuple[str, str]:
    archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
    try:
        info, password = await archive.create_mailbox("workers")
        return info.mailbox_id, password
    finally:
        await archive.aclose()


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def send(port: int, mailbox_id: str, body: bytes, host: str = "127.0.0.1") -> None:
    """One message in a session of its own, to ``host`` and from it (the client's address
    is the server's, so a loopback address names a node)."""
    with smtplib.SMTP(host, port, timeout=20, source_address=(host, 0)) as smtp:
        smtp.sendmail("a@example.com", [f"mbx-{mailbox_id}@localhost"], body)


def send_all(port: int, mailbox_id: str, bodies: list[bytes], host: str = "127.0.0.1") -> None:
    """Each body in a session of its own, all at once."""
    threads = [
        threading.Thread(target=send, args=(port, mailbox_id, body, host)) for body in bodies
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)


def retrieve(
    port: int, mailbox_id: str, password: str, *, delete: bool = False, host: str = "127.0.0.1"
) -> list[bytes]:
    pop = poplib.POP3(host, port, timeout=20)
    try:
        pop.stls(context=insecure())
        pop.user(mailbox_id)
        pop.pass_(password)
        count, _size = pop.stat()
        bodies = []
        for n in range(1, count + 1):
            _resp, lines, _octets = pop.retr(n)
            bodies.append(b"\r\n".join(lines) + b"\r\n")
            if delete:
                pop.dele(n)
        return bodies
    finally:
        pop.quit()


def test_two_workers_share_the_load_and_the_journal_keeps_it(tmp_path: Path) -> None:
    mailbox_id, password = trio.run(create_mailbox, tmp_path / "data")
    sent = [b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(60)]
    with serve(tmp_path) as served:
        send_all(served.ports["smtp"], mailbox_id, sent)
        stored = retrieve(served.ports["pop3"], mailbox_id, password)
        assert sorted(strip_received(b) for b in stored) == sorted(sent)
        by_worker = {
            name: sum(1 for line in served.lines if name in line and "smtp-message-stored" in line)
            for name in ("worker-1", "worker-2")
        }
        assert sum(by_worker.values()) == len(sent)
        assert all(by_worker.values()), f"one worker took every session: {by_worker}"
    assert served.process.returncode == 0
    report = verify_data_dir(tmp_path / "data")
    assert report.ok and report.messages == len(sent), report.problems


def connections_by_worker(served: Served, port: int) -> dict[str, int]:
    """How many established connections to local ``port`` each worker holds (its open
    descriptors against /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # ESTABLISHED
            inodes.add(fields[9])
    held = {}
    for name, pid in served.children().items():
        fds = Path(f"/proc/{pid}/fd")
        links = [os.readlink(fd) for fd in fds.iterdir()]
        held[name] = sum(1 for link in links if link[8:-1] in inodes and "socket:" in link)
    return held


def test_a_burst_of_connections_is_spread_over_the_workers(tmp_path: Path) -> None:
    """Every waiting worker is woken by a new connection; the first to accept would take a
    whole burst (8/0 before). A worker serving more sessions than another leaves a waiting
    connection to it for a moment (servers/load.py)."""
    with serve(tmp_path) as served:
        port = served.ports["smtp"]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(8)]
        try:
            for client in clients:
                assert client.recv(512).startswith(b"220 ")
            held = connections_by_worker(served, port)
            status = admin_status(tmp_path, served)
        finally:
            for client in clients:
                client.close()
    assert held.get("journal", 0) == 0 and sum(held.values()) == 8, held
    assert min(held["worker-1"], held["worker-2"]) >= 3, held
    # The journal's status adds up every worker's sessions (the shared counts).
    assert status["sessions"] == 8
    assert status["workers"] == [held["worker-1"], held["worker-2"]]


def admin_cli(tmp_path: Path, served: Served, *args: str, host: str = "localhost") -> str:
    """``gateway <args> --json`` against the served gateway's admin listener: its output."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            *args,
            "--json",
            "--config",
            str(tmp_path / "gateway.toml"),
            "--url",
            f"wss://{host}:{served.ports['admin']}/api",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GATEWAY_ADMIN_PASSWORD": "an admin password for tests"},
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    return result.stdout


def admin_status(tmp_path: Path, served: Served) -> dict[str, object]:
    reply: dict[str, object] = json.loads(admin_cli(tmp_path, served, "status"))
    return reply


def test_worker_loads_are_shared_and_a_gone_worker_is_never_waited_for() -> None:
    supervisor = WorkerLoads.create(3)
    try:
        workers = [WorkerLoads.inherited(supervisor.spec(slot)) for slot in range(3)]
        assert not workers[0].busier(5)  # nobody else is running yet
        workers[1].publish(2)
        assert workers[0].busier(3) and not workers[0].busier(2)
        workers[2].publish(0)
        assert workers[0].busier(1) and not workers[2].busier(0)
        supervisor.set(2, GONE)  # worker 3 died: not counted until its replacement serves
        assert not workers[0].busier(2) and workers[0].busier(3)
        workers[0].publish(4)
        journal = WorkerLoads.inherited(supervisor.spec(None))  # reads, for its status
        assert journal.slot is None and journal.sessions() == [4, 2, None]
        with pytest.raises(ValueError, match="slot 3 of 3"):
            WorkerLoads.inherited(f"{supervisor.fd},3,3")
    finally:
        supervisor.close()


def test_a_maildrop_is_locked_across_workers(tmp_path: Path) -> None:
    mailbox_id, password = trio.run(create_mailbox, tmp_path / "data")
    with serve(tmp_path) as served:
        sessions = []
        try:
            for _ in range(6):
                pop = poplib.POP3("127.0.0.1", served.ports["pop3"], timeout=20)
                pop.stls(context=insecure())
                pop.user(mailbox_id)
                try:
                    pop.pass_(password)
                    sessions.append(("ok", pop))
                except poplib.error_proto as exc:
                    sessions.append((exc.args[0].decode(), pop))
            outcomes = [outcome for outcome, _pop in sessions]
            assert outcomes.count("ok") == 1, outcomes
            assert all("[IN-USE]" in o for o in outcomes if o != "ok"), outcomes
        finally:
            for _outcome, pop in sessions:
                pop.quit()
        served.wait_for_line(r"worker-\d event=")  # both workers logged their sessions


def test_kill_9_of_a_worker_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    mailbox_id, password = trio.run(create_mailbox, data)
    acknowledged: set[bytes] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int, port: int) -> None:
        sent = 0
        while not stop.is_set():
            body = b"Subject: %d-%d\r\n\r\n" % (n, sent) + b"x" * (500 + 300 * (sent % 5)) + b"\r\n"
            try:
                send(port, mailbox_id, body)
            except (smtplib.SMTPException, OSError):
                continue  # its worker died under it: try again
            with lock:
                acknowledged.add(body)
            sent += 1

    with serve(tmp_path) as served, stopping(stop):
        threads = [
            threading.Thread(target=client, args=(n, served.ports["smtp"]), daemon=True)
            for n in range(20)
        ]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        before = served.children()
        assert "worker-1" in before, "".join(served.lines[-30:])
        victim = before["worker-1"]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        while True:
            now_children = served.children()
            replacement = now_children.get("worker-1")
            if replacement is not None and replacement != victim:
                break
            assert time.monotonic() - killed_at < 1.0, "no replacement within 1 s"
            time.sleep(0.02)
        assert now_children.get("worker-2") == before["worker-2"], "".join(served.lines[-60:])
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        stored = {strip_received(b) for b in retrieve(served.ports["pop3"], mailbox_id, password)}
    missing = acknowledged - stored
    assert acknowledged and not missing, f"{len(missing)} acknowledged messages lost"
    assert verify_data_dir(data).ok


def test_kill_9_of_the_journal_stops_acknowledging_and_comes_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    mailbox_id, password = trio.run(create_mailbox, data)
    acknowledged: list[bytes] = []
    with serve(tmp_path) as served:
        for n in range(10):
            body = b"Subject: before %d\r\n\r\nx\r\n" % n
            send(served.ports["smtp"], mailbox_id, body)
            acknowledged.append(body)
        journal = served.children()["journal"]
        # A session open on a worker when the journal dies can acknowledge nothing more.
        smtp = smtplib.SMTP("127.0.0.1", served.ports["smtp"], timeout=20)
        smtp.ehlo()
        os.kill(journal, signal.SIGKILL)
        with pytest.raises((smtplib.SMTPException, OSError)):
            smtp.sendmail("a@example.com", [f"mbx-{mailbox_id}@localhost"], b"lost\r\n")
        smtp.close()
        deadline = time.monotonic() + 30
        while True:  # the journal and its workers come back
            try:
                body = b"Subject: after\r\n\r\nx\r\n"
                send(served.ports["smtp"], mailbox_id, body)
                acknowledged.append(body)
                break
            except (smtplib.SMTPException, OSError):
                assert time.monotonic() < deadline, "the gateway did not come back"
                time.sleep(0.2)
        assert served.children()["journal"] != journal
        stored = [strip_received(b) for b in retrieve(served.ports["pop3"], mailbox_id, password)]
        assert sorted(stored) == sorted(acknowledged)
    assert served.process.returncode == 0
    assert verify_data_dir(data).ok


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_kill_9_of_the_supervisor_leaves_no_orphans(tmp_path: Path) -> None:
    trio.run(create_mailbox, tmp_path / "data")
    with serve(tmp_path) as served:
        children = served.children()
        assert set(children) == {"journal", "worker-1", "worker-2"}
        served.process.kill()
        served.process.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in children.values()):
            assert time.monotonic() < deadline, "children outlived the supervisor"
            time.sleep(0.05)
        assert port_is_free(served.ports["smtp"]) and port_is_free(served.ports["pop3"])
        assert port_is_free(served.ports["admin"])


def test_sighup_reloads_every_child_and_sigterm_drains(tmp_path: Path) -> None:
    trio.run(create_mailbox, tmp_path / "data")
    with serve(tmp_path) as served:
        served.process.send_signal(signal.SIGHUP)
        for name in ("journal", "worker-1", "worker-2"):
            served.wait_for_line(rf"{name} event=reloaded")
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    assert verify_data_dir(tmp_path / "data").ok


def frame(body: bytes) -> bytes:
    return struct.pack("<I", len(body)) + body


def test_bad_frames_on_the_journal_socket_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    mailbox_id, _password = trio.run(create_mailbox, data)
    encoder = msgspec.msgpack.Encoder()
    with serve(tmp_path) as served:
        path = served.journal_socket()
        assert oct(path.stat().st_mode & 0o777) == oct(0o600)

        def talk(*payloads: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                for payload in payloads:
                    sock.sendall(payload)
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                return received

        assert talk(b"\x00garbage that is not a frame at all") == b""
        served.wait_for_line(r"journal event=journal-bad")
        assert talk(struct.pack("<I", 1 << 30)) == b""  # a length over the limit
        hello = encoder.encode(
            {"op": "hello", "id": 1, "version": PROTOCOL_VERSION, "worker": "intruder"}
        )
        forged = encoder.encode(
            {
                "op": "audit",
                "id": 2,
                "event": encoder.encode(
                    MailboxDeleted(at=now(), mailbox_id=mailbox_id, purged_messages=0)
                ),
            }
        )
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(frame(hello) + frame(forged))
            received = b""
            while b"audit events only" not in received:
                chunk = sock.recv(65536)
                assert chunk, "the journal closed before refusing the forged event"
                received += chunk
        stored = b"x"
        send(served.ports["smtp"], mailbox_id, b"Subject: still served\r\n\r\n" + stored + b"\r\n")
    report = verify_data_dir(data)
    assert report.ok and report.mailboxes == 1 and report.messages == 1
