"""Running a gateway in the test's nursery, and reading back what it stored."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.config import (
    Config,
    KdfSettings,
    ListenerConfig,
    POP3Config,
    Protocol,
    SMTPConfig,
    StoreSettings,
    TLSMode,
)
from gateway.crypto import MailboxPrivateKey
from gateway.servers.gateway import Gateway, Listening
from gateway.services.archive import Archive

FAST = KdfSettings(memory_kib=64, iterations=1, lanes=1)
# A `gateway serve --config` file for tests that run the real command: SMTP and the admin
# listener on free ports, the cheapest Argon2id ({data}: the data folder).
SERVE_CONFIG = """
data_dir = "{data}"
[[listeners]]
name = "smtp"
protocol = "smtp"
port = 0
[[listeners]]
name = "admin"
protocol = "admin"
port = 0
tls = "implicit"
[store]
min_free_bytes = 0
[store.kdf]
memory_kib = 64
iterations = 1
lanes = 1
insecure_fast_for_tests = true
"""


@dataclass
class Running:
    gateway: Gateway
    archive: Archive
    ports: dict[str, int]
    cafile: Path
    admin_password: str

    def port(self, name: str) -> int:
        return self.ports[name]

    @property
    def admin_url(self) -> str:
        return f"wss://localhost:{self.ports['admin']}/api"

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.cafile))
        return context


def make_config(data: Path, **smtp: object) -> Config:
    listeners = (
        ListenerConfig(name="smtp", protocol=Protocol.SMTP, port=0, tls=TLSMode.STARTTLS),
        ListenerConfig(name="smtps", protocol=Protocol.SMTP, port=0, tls=TLSMode.IMPLICIT),
        ListenerConfig(name="pop3", protocol=Protocol.POP3, port=0, tls=TLSMode.STARTTLS),
        ListenerConfig(name="pop3s", protocol=Protocol.POP3, port=0, tls=TLSMode.IMPLICIT),
        ListenerConfig(name="admin", protocol=Protocol.ADMIN, port=0, tls=TLSMode.IMPLICIT),
    )
    config = Config(
        data_dir=str(data),
        listeners=listeners,
        # The host's free space must not decide a test: the floor has tests of its own.
        store=StoreSettings(kdf=FAST, min_free_bytes=0),
        pop3=POP3Config(failure_delay=0.05),
        smtp=SMTPConfig(auth_failure_delay=0.05),
    )
    if smtp:
        config = msgspec.structs.replace(config, smtp=msgspec.structs.replace(config.smtp, **smtp))
    return config


@pytest.fixture
async def running(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Running]:
    passwords: list[str] = []
    gateway = Gateway(
        make_config(tmp_path / "data"), environ={}, announce_admin_password=passwords.append
    )
    listening: list[Listening] = await nursery.start(gateway.run)
    assert gateway.archive is not None
    ports = {item.name: item.port for item in listening}
    yield Running(
        gateway, gateway.archive, ports, tmp_path / "data" / "tls" / "cert.pem", passwords[0]
    )
    gateway.request_shutdown()


async def stored_bodies(archive: Archive, mailbox_id: str, key: MailboxPrivateKey) -> list[bytes]:
    bodies = []
    for message in archive.messages(mailbox_id):
        bodies.append(
            b"".join([p async for p in archive.read_message(mailbox_id, message.message_id, key)])
        )
    return bodies


def strip_received(stored: bytes) -> bytes:
    """The stored message without the gateway's trace field (its lines up to the first line
    that is not a continuation)."""
    assert stored.startswith(b"Received: from ")
    end = 0
    while True:
        end = stored.index(b"\r\n", end) + 2
        if stored[end : end + 1] not in (b"\t", b" "):
            return stored[end:]
