"""The key forge: prepared message keys from a child process, transparently."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import smtplib
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import msgspec
import pytest
import trio
import trio.lowlevel

from gateway.crypto import MailboxPrivateKey
from gateway.events import Envelope, now
from gateway.services.archive import Archive, StoreConfig
from gateway.services.keyforge import KeyForge
from gateway.verify import verify_data_dir

from .gateway_helpers import SERVE_CONFIG

ROOT = Path(__file__).resolve().parent.parent


async def store_many(archive: Archive, box: str, count: int) -> dict[str, bytes]:
    stored = {}
    for n in range(count):
        body = b"message %d " % n + os.urandom(n % 700)
        writer = archive.begin_message([box])
        await writer.write(body)
        stored[(await writer.commit(Envelope(received_at=now(), origin="journal")))[box]] = body
        await trio.lowlevel.checkpoint()  # let the forge refill, as a real intake would
    return stored


async def test_prepared_keys_seal_messages_that_open(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        info, password = await archive.create_mailbox("x")
        box = info.mailbox_id
        forge = KeyForge(batch=8)
        async with trio.open_nursery() as nursery:
            await nursery.start(forge.run)
            archive.key_forge = forge
            stored = await store_many(archive, box, 20)  # primes the pool
            with trio.fail_after(10):
                while forge.statistics()["pooled"] < 8:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            stored |= await store_many(archive, box, 100)
            assert forge.served > 50
            # A reset makes a new key: the old pool is dropped, the new key gets its own.
            password, _lost = await archive.reset_password(box)
            fresh = await store_many(archive, box, 30)
            nursery.cancel_scope.cancel()
        key = await archive.unlock(box, password)
        for message_id, body in fresh.items():
            assert b"".join([p async for p in archive.read_message(box, message_id, key)]) == body
    finally:
        await archive.aclose()
    report = verify_data_dir(tmp_path / "data", mailbox_id=box, password=password)
    assert report.ok, report.problems
    assert report.opened_messages == len(fresh)
    assert report.messages == len(stored) + len(fresh)


async def test_a_killed_forge_restarts_and_intake_never_waits(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        info, password = await archive.create_mailbox("x")
        box = info.mailbox_id
        forge = KeyForge(batch=4)
        async with trio.open_nursery() as nursery:
            await nursery.start(forge.run)
            archive.key_forge = forge
            stored = await store_many(archive, box, 10)
            assert forge.pid is not None
            os.kill(forge.pid, signal.SIGKILL)
            with trio.fail_after(10):
                stored |= await store_many(archive, box, 40)  # inline while it is down
                while forge.restarts == 0:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            stored |= await store_many(archive, box, 40)
            nursery.cancel_scope.cancel()
        assert forge.missed > 0
        key = await archive.unlock(box, password)
        for message_id, body in stored.items():
            assert b"".join([p async for p in archive.read_message(box, message_id, key)]) == body
    finally:
        await archive.aclose()


async def test_a_forge_full_of_idle_pools_still_serves_a_new_mailbox(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Regression: pools were never let go, so once mailboxes that stopped receiving held
    the whole capacity, every later mailbox sealed inline. The least recently used go."""
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        boxes = [(await archive.create_mailbox(f"m{n}"))[0].mailbox_id for n in range(6)]
        forge = KeyForge(batch=4, capacity=12)  # room for three mailboxes' batches
        async with trio.open_nursery() as nursery:
            await nursery.start(forge.run)
            archive.key_forge = forge
            for box in boxes:
                await store_many(archive, box, 3)
                with trio.fail_after(10):
                    while forge.statistics()["pooled"] == 0:  # noqa: ASYNC110
                        await trio.sleep(0.01)
            served = forge.served
            await store_many(archive, boxes[-1], 3)
            assert forge.served > served, "the newest mailbox got no prepared key"
            assert forge.statistics()["pooled"] <= forge.capacity
            nursery.cancel_scope.cancel()
    finally:
        await archive.aclose()


def forge_request(count: int) -> bytes:
    public_key = MailboxPrivateKey.generate().public_key().public_bytes
    body = msgspec.msgpack.encode([public_key, os.urandom(16), count])
    return struct.pack("<I", len(body)) + body


def test_a_forge_whose_gateway_is_gone_ends_quietly() -> None:
    """Regression: the child wrote a BrokenPipeError traceback when its reply found nobody
    to read it (the gateway killed while the child worked)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "gateway.services._keyforge_worker"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdout.close()  # the gateway's end of the replies: gone
    child.stdin.write(forge_request(1024))
    child.stdin.close()
    assert child.stderr is not None
    with child.stderr:
        assert child.stderr.read() == b""
    assert child.wait(timeout=30) == 0


def forge_of(pid: int) -> int:
    """The key forge's pid: the child of ``pid`` that runs it."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes()
        except OSError:  # not a process, or gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"_keyforge_worker" in args:
            return int(entry.name)
    raise AssertionError(f"process {pid} runs no key forge")


def pipe_holds(pid: int, fd: int) -> int:
    """How many bytes wait in the pipe that is descriptor ``fd`` of process ``pid``."""
    reader = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        held = fcntl.ioctl(reader, termios.FIONREAD, b"\0\0\0\0")
    finally:
        os.close(reader)
    return int(struct.unpack("i", held)[0])


@pytest.mark.slow
def test_kill_9_of_the_gateway_ends_its_forge_quietly(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """kill -9 of a `gateway serve` while its forge works on a request: the forge finds
    nobody to reply to, and ends without a word on the log they share."""

    async def create_mailbox() -> str:
        archive = await Archive.open(tmp_path / "data", store_config)
        try:
            return (await archive.create_mailbox("forge"))[0].mailbox_id
        finally:
            await archive.aclose()

    mailbox_id = trio.run(create_mailbox)
    config = tmp_path / "gateway.toml"
    config.write_text(SERVE_CONFIG.format(data=tmp_path / "data"))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        env={**os.environ, "GATEWAY_ADMIN_PASSWORD": "an admin password for tests"},
    )
    assert gateway.stderr is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(gateway.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    forge = None
    try:
        deadline = time.monotonic() + 60
        while not (port := smtp_port(lines)):
            assert gateway.poll() is None and time.monotonic() < deadline, b"".join(lines)
            time.sleep(0.05)
        forge = forge_of(gateway.pid)
        os.kill(forge, signal.SIGSTOP)  # busy: the request waits for it
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail(
                "a@example.com", [f"mbx-{mailbox_id}@localhost"], b"Subject: x\r\n\r\nx\r\n"
            )
        while pipe_holds(forge, 0) == 0:  # the first message asked the forge for keys
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gateway.kill()
        gateway.wait()
        os.kill(forge, signal.SIGCONT)  # it makes the keys, and finds nobody to take them
        reader.join(timeout=30)  # the log ends when the forge, its last writer, has
        assert not reader.is_alive(), "the forge outlived its gateway"
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        if forge is not None and Path(f"/proc/{forge}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(forge, signal.SIGKILL)
        reader.join(timeout=10)
        gateway.stderr.close()
    log = b"".join(lines).decode()
    for sign in ("Traceback", "BrokenPipeError", "Exception ignored"):
        assert sign not in log, log


def smtp_port(lines: list[bytes]) -> int | None:
    for line in list(lines):
        match = re.search(rb"event=listening name=smtp .* port=(\d+)", line)
        if match:
            return int(match.group(1))
    return None
