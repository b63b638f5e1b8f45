"""A 100 MiB message in over SMTP and out over POP3 with a gateway in its own process: the
peak resident memory of that process stays bounded (pieces of 256 KiB, never the message)."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from gateway.crypto import KdfParams
from gateway.services.archive import Archive, StoreConfig

from .gateway_helpers import FAST

SIZE = int(os.environ.get("POP3_MEMORY_TEST_MIB", "100")) * 1024 * 1024
LINE = b"x" * 998 + b"\r\n"  # RFC 5321's longest line; never starts with "."


def vm(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"{field}:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


def reply(sock: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        assert chunk, "connection closed"
        data += chunk
    return data


def smtp_send(port: int, address: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert reply(sock).startswith(b"220")
        for command in (
            b"HELO test\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            f"RCPT TO:<{address}>\r\n".encode(),
            b"DATA\r\n",
        ):
            sock.sendall(command)
            answer = reply(sock)
            assert answer[:1] in (b"2", b"3"), answer
        sock.sendall(b"Subject: big\r\n\r\n")
        block = LINE * 64
        for _ in range(SIZE // len(block) + 1):
            sock.sendall(block)
        sock.sendall(b".\r\n")
        answer = reply(sock)
        assert answer.startswith(b"250"), answer
        sock.sendall(b"QUIT\r\n")


def pop3_retrieve(port: int, cafile: str, user: str, password: str) -> int:
    context = ssl.create_default_context(cafile=cafile)
    with (
        socket.create_connection(("localhost", port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        assert reply(sock).startswith(b"+OK")
        for command in (f"USER {user}\r\n", f"PASS {password}\r\n"):
            sock.sendall(command.encode())
            assert reply(sock).startswith(b"+OK")
        sock.sendall(b"RETR 1\r\n")
        total, tail = 0, b""
        while not tail.endswith(b"\r\n.\r\n"):
            chunk = sock.recv(1 << 20)
            assert chunk
            total += len(chunk)
            tail = (tail + chunk)[-5:]
        sock.sendall(b"QUIT\r\n")
        return total


@pytest.mark.slow
async def test_100_mib_message_in_and_out_with_bounded_memory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The store's fast KDF: Argon2id at its real 64 MiB would be the biggest thing measured.
    kdf = KdfParams(memory_kib=FAST.memory_kib, iterations=FAST.iterations, lanes=FAST.lanes)
    archive = await Archive.open(data, StoreConfig(kdf=kdf))
    info, password = await archive.create_mailbox("big")
    await archive.aclose()
    config = tmp_path / "gateway.toml"
    ports = {name: _free_port() for name in ("smtp", "pop3s")}
    config.write_text(
        f'data_dir = "{data}"\n'
        f'[[listeners]]\nname = "smtp"\nprotocol = "smtp"\nport = {ports["smtp"]}\n'
        f'[[listeners]]\nname = "pop3s"\nprotocol = "pop3"\nport = {ports["pop3s"]}\n'
        'tls = "implicit"\n'
        f"[store.kdf]\nmemory_kib = {FAST.memory_kib}\niterations = {FAST.iterations}\n"
        f"lanes = {FAST.lanes}\ninsecure_fast_for_tests = true\n"
        f"[smtp]\nmax_message_size = {2 * SIZE}\n"
    )
    env = {**os.environ, "GATEWAY_ADMIN_PASSWORD": "a long admin password"}
    log = tmp_path / "gateway.log"
    with log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["pop3s"]), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the gateway did not start"
                await trio.sleep(0.1)
        baseline = vm(process.pid, "VmRSS")
        address = f"mbx-{info.mailbox_id}@localhost"
        await trio.to_thread.run_sync(smtp_send, ports["smtp"], address)
        after_intake = vm(process.pid, "VmHWM")
        received = await trio.to_thread.run_sync(
            pop3_retrieve, ports["pop3s"], str(data / "tls" / "cert.pem"), info.mailbox_id, password
        )
        peak = vm(process.pid, "VmHWM")
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(60):
            await process.wait()
    assert received > SIZE
    print(
        f"baseline {baseline >> 20} MiB, peak after intake {after_intake >> 20} MiB, "
        f"peak after retrieval {peak >> 20} MiB"
    )
    assert peak - baseline < 32 * 1024 * 1024, log.read_text()[-2000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
