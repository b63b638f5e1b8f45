"""Connections that never get to a session (issue 12 item 5): idle connections to the
implicit-TLS listeners were not counted until their handshake, so 600 per port were accepted,
and 1,100 of them to one listener took every descriptor and left the others unable to
answer. Clients bind to other loopback addresses (127.0.0.0/8 is loopback on Linux)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.config import AdminConfig, Config
from gateway.log import iter_log
from gateway.servers.gateway import Gateway, Listening
from gateway.services._common import CONTROL_LOG_ID

from .gateway_helpers import make_config

ROOT = Path(__file__).resolve().parent.parent


async def connect(port: int, source: str) -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def first_line(stream: trio.SocketStream) -> bytes:
    """What the server says first (b"" if it closes without a word), within 5 s."""
    data = b""
    with trio.fail_after(5):
        while b"\n" not in data:
            try:
                chunk = await stream.receive_some(4096)
            except trio.BrokenResourceError:  # reset: closed without a word
                return data
            if not chunk:
                return data
            data += chunk
    return data


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[Gateway, dict[str, int]]]:
    # Idle connections are sessions too: shutdown gives them a short grace.
    gateway = Gateway(msgspec.structs.replace(config, shutdown_grace=0.5), environ={})
    async with trio.open_nursery() as nursery:
        listening: list[Listening] = await nursery.start(gateway.run)
        yield gateway, {item.name: item.port for item in listening}
        gateway.request_shutdown()


def summaries(data: Path) -> list[dict[str, object]]:
    events = [msgspec.msgpack.decode(r.body) for r in iter_log(data / "control", CONTROL_LOG_ID)]
    return [e for e in events if e["type"] == "ConnectionsSummarized"]


@pytest.mark.parametrize(
    ("protocol", "implicit", "plain", "total", "busy"),
    [
        ("smtp", "smtps", "smtp", 4, b"421 4.7.0 Too many connections, try again later\r\n"),
        # POP3 keeps one of 5 for clients that logged in before: 4 for everyone else.
        ("pop3", "pop3s", "pop3", 5, b"-ERR [SYS/TEMP] too many connections, try again later\r\n"),
    ],
)
async def test_idle_connections_before_the_tls_handshake_count_against_the_session_limits(
    tmp_path: Path, protocol: str, implicit: str, plain: str, total: int, busy: bytes
) -> None:
    config = make_config(tmp_path / "data")
    section = getattr(config, protocol)
    limits = msgspec.structs.replace(section, max_sessions=total, max_sessions_per_client=2)
    config = msgspec.structs.replace(config, **{protocol: limits})
    async with AsyncExitStack() as idle, serving(config) as (_gateway, ports):
        held = []
        for source in ("127.0.7.2", "127.0.7.2"):
            held.append(await idle.enter_async_context(await connect(ports[implicit], source)))
        # A third from the same address: closed at once, no handshake waited for.
        async with await connect(ports[implicit], "127.0.7.2") as third:
            assert await first_line(third) == b""
        for source in ("127.0.7.3", "127.0.7.3"):
            held.append(await idle.enter_async_context(await connect(ports[implicit], source)))
        # Four idle connections fill the protocol's limit: the plain listener says so.
        async with await connect(ports[plain], "127.0.7.4") as over:
            assert await first_line(over) == busy
        await held.pop().aclose()
        with trio.fail_after(5):
            while True:  # the slot comes back once the server sees the close
                async with await connect(ports[plain], "127.0.7.4") as client:
                    line = await first_line(client)
                if line != busy:
                    break
                await trio.sleep(0.05)
        assert line.startswith((b"220 ", b"+OK"))
    refused = {s["listener"]: s["refused"] for s in summaries(tmp_path / "data")}
    assert refused[implicit] == 1
    plain_refused = refused[plain]
    assert isinstance(plain_refused, int) and plain_refused >= 1


async def test_idle_connections_to_the_admin_listener_are_limited(tmp_path: Path) -> None:
    config = msgspec.structs.replace(
        make_config(tmp_path / "data"), admin=AdminConfig(max_connections=2)
    )
    async with AsyncExitStack() as idle, serving(config) as (_gateway, ports):
        for source in ("127.0.7.5", "127.0.7.5", "127.0.7.6", "127.0.7.6"):
            await idle.enter_async_context(await connect(ports["admin"], source))
        for source in ("127.0.7.5", "127.0.7.7"):  # per address, then in all
            async with await connect(ports["admin"], source) as over:
                assert await first_line(over) == b""


CONFIG = """
data_dir = "{data}"
[[listeners]]
name = "smtp"
protocol = "smtp"
port = 0
[[listeners]]
name = "smtps"
protocol = "smtp"
port = 0
tls = "implicit"
[[listeners]]
name = "pop3"
protocol = "pop3"
port = 0
[store.kdf]
memory_kib = 64
iterations = 1
lanes = 1
insecure_fast_for_tests = true
"""
DESCRIPTORS = 600  # the gateway's open-file limit in this test (soft and hard)
IDLE = 900  # idle connections to the implicit-TLS listener: more than it has descriptors


def start_gateway(
    config: Path,
) -> tuple[subprocess.Popen[str], dict[str, int], list[str], threading.Thread]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))

    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit,  # noqa: PLW1509 - only setrlimit, no threads started yet
    )
    assert process.stderr is not None
    lines: list[str] = []
    ports: dict[str, int] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(ports) < 3:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if match := re.search(r"event=listening name=(\w+) .* port=(\d+)", line):
            ports[match.group(1)] = int(match.group(2))
    if len(ports) < 3:
        process.kill()
        raise AssertionError("gateway did not start:\n" + "".join(lines))
    stderr = process.stderr
    reader = threading.Thread(target=lambda: lines.extend(stderr), daemon=True)
    reader.start()  # keep draining stderr so the server never blocks on a full pipe
    return process, ports, lines, reader


async def settled(pid: int) -> None:
    """Until the gateway has taken what waits in its listen queues: its descriptor count
    has not changed for half a second (at most 10 s)."""
    counts: list[int] = []
    with trio.move_on_after(10):
        while len(counts) < 5 or len(set(counts[-5:])) > 1:
            counts.append(len(os.listdir(f"/proc/{pid}/fd")))
            await trio.sleep(0.1)


async def test_idle_tls_connections_cannot_starve_the_other_listeners_of_descriptors(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data"))
    process, ports, lines, reader = start_gateway(config)
    try:
        async with AsyncExitStack() as idle:
            for n in range(IDLE):
                with trio.move_on_after(2):  # a full backlog may leave a connect hanging
                    await idle.enter_async_context(
                        await connect(ports["smtps"], f"127.0.9.{n // 40 + 2}")
                    )
            await settled(process.pid)
            # Every other listener still answers, at once.
            async with await connect(ports["pop3"], "127.0.10.2") as client:
                assert (await first_line(client)).startswith(b"+OK")
            async with await connect(ports["smtp"], "127.0.10.2") as client:
                assert (await first_line(client)).startswith((b"220 ", b"421 4.7.0"))
        assert any("event=session-limit-lowered" in line for line in lines), "".join(lines)
    finally:
        process.terminate()
        await trio.to_thread.run_sync(process.wait)
        await trio.to_thread.run_sync(reader.join)
        assert process.stderr is not None
        process.stderr.close()
