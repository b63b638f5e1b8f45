"""kill -9 of the server while 20 clients are sending: after restart every message that got a
250 is there and verifies; none that did not get one is half there, and a message to two
mailboxes is in both or in neither (SPEC.md 6.2)."""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from gateway.services.archive import Archive, StoreConfig
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF
from .gateway_helpers import strip_received

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
data_dir = "{data}"
[[listeners]]
name = "smtp"
protocol = "smtp"
port = 0
[store]
segment_bytes = 262144
min_free_bytes = 0
[store.kdf]
memory_kib = 64
iterations = 1
lanes = 1
insecure_fast_for_tests = true
"""


def start_gateway(config: Path) -> tuple[subprocess.Popen[str], int, threading.Thread]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    port = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"event=listening name=smtp .* port=(\d+)", line)
        if match:
            port = port or int(match.group(1))  # the supervisor's, first
        if port and "event=supervisor-ready" in line:  # the journal and every worker serve
            # Keep draining stderr so the server never blocks on a full pipe. The reader
            # ends when the last process holding the pipe (supervisor, journal, workers) has.
            stderr = process.stderr
            reader = threading.Thread(target=lines.extend, args=(stderr,), daemon=True)
            reader.start()
            return process, port, reader
    process.kill()
    raise AssertionError("gateway did not start:\n" + "".join(lines))


async def create_mailbox(data: Path) -> tuple[str, str]:
    archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
    try:
        info, password = await archive.create_mailbox("crash")
        return info.mailbox_id, password
    finally:
        await archive.aclose()


async def read_all(data: Path, mailbox_id: str, password: str) -> list[bytes]:
    archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
    try:
        key = await archive.unlock(mailbox_id, password)
        return [
            b"".join([p async for p in archive.read_message(mailbox_id, m.message_id, key)])
            for m in archive.messages(mailbox_id)
        ]
    finally:
        await archive.aclose()


def test_kill_9_while_20_clients_send(tmp_path: Path) -> None:
    data = tmp_path / "data"
    mailbox_id, password = trio.run(create_mailbox, data)
    other_id, other_password = trio.run(create_mailbox, data)
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(data=data))
    acknowledged: set[bytes] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int, port: int) -> None:
        sent = 0
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                while not stop.is_set():
                    both = n % 2 == 0  # half the clients address both mailboxes
                    subject = b"Subject: %s%d-%d\r\n\r\n" % (b"both " if both else b"", n, sent)
                    body = subject + bytes([65 + n]) * (1000 + 5000 * (sent % 7)) + b"\r\n"
                    rcpts = [f"mbx-{mailbox_id}@localhost"]
                    if both:
                        rcpts.append(f"mbx-{other_id}@localhost")
                    smtp.sendmail("a@example.com", rcpts, body)
                    with lock:
                        acknowledged.add(body)
                    sent += 1
        except (smtplib.SMTPException, OSError):
            return  # the server died under us: what was not acknowledged may be lost

    for round_no, after in enumerate((1.5, 2.5, 0.7, 2.0, 1.2, 3.0)):
        process, port, reader = start_gateway(config)
        stop.clear()
        threads = [threading.Thread(target=client, args=(n, port)) for n in range(20)]
        for thread in threads:
            thread.start()
        time.sleep(after)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        # The journal and workers exit when they see the supervisor gone: wait for the
        # last of them (the end of their stderr) before the store is read.
        reader.join(timeout=30)
        assert not reader.is_alive(), f"round {round_no}: a child outlived the supervisor"
        assert process.stderr is not None
        process.stderr.close()
        assert acknowledged, f"round {round_no}: nothing was acknowledged"

        report = verify_data_dir(data, mailbox_id=mailbox_id, password=password)
        assert report.ok, [str(p) for p in report.problems]
        stored = [strip_received(b) for b in trio.run(read_all, data, mailbox_id, password)]
        assert report.opened_messages == len(stored)
        missing = acknowledged - set(stored)
        assert not missing, f"round {round_no}: {len(missing)} acknowledged messages lost"
        other = [strip_received(b) for b in trio.run(read_all, data, other_id, other_password)]
        to_both = {b for b in stored if b.startswith(b"Subject: both")}
        assert to_both == set(other), f"round {round_no}: a two-mailbox message is in one only"
        assert to_both, f"round {round_no}: no message to both mailboxes was stored"
