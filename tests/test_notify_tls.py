"""sd_notify datagrams and the certificate the gateway makes for itself."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import trio

from gateway.log import DataDir
from gateway.servers.notify import SystemdNotifier
from gateway.tls import TLSContextHolder, certificate_summary, make_self_signed


def test_notifications_reach_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    try:
        notifier = SystemdNotifier(str(path), watchdog_usec=200_000)
        notifier.notify("READY=1", "STATUS=serving")
        assert server.recv(1024) == b"READY=1\nSTATUS=serving"
        notifier.reloading()
        assert server.recv(1024).startswith(b"RELOADING=1\nMONOTONIC_USEC=")

        async def ping() -> None:
            with trio.move_on_after(0.25):
                await notifier.watchdog()

        trio.run(ping)
        assert server.recv(1024) == b"WATCHDOG=1"
        assert notifier.watchdog_interval == 0.1
        notifier.close()
    finally:
        server.close()


def test_without_systemd_nothing_happens(monkeypatch: object) -> None:
    notifier = SystemdNotifier(None)
    assert not notifier.enabled
    notifier.notify("READY=1")  # no socket, no error


def test_the_self_signed_certificate_is_made_once_and_kept(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    data.ensure()
    made = []

    def make() -> tuple[bytes, bytes]:
        made.append(1)
        return make_self_signed("gw.example.org")

    cert, key = data.read_or_create_tls(make)
    again = data.read_or_create_tls(make)
    assert again == (cert, key) and made == [1]
    assert key.stat().st_mode & 0o777 == 0o600
    subject, fingerprint, _expires = certificate_summary(cert)
    assert subject == "CN=gw.example.org"
    assert len(fingerprint.split(":")) == 32
    holder = TLSContextHolder(cert, key)
    assert holder.context.minimum_version == ssl.TLSVersion.TLSv1_2
    before = holder.context
    holder.reload()
    assert holder.context is not before
