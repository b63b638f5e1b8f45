"""The custody report (SPEC.md 8.2) on a scripted history, run as ``gateway custody`` while the
gateway serves: journal intake over SMTP with and without TLS, a POP3 proxy copy, retrievals
from two addresses, deletions by POP3 and by an administrator, a compaction. It lists exactly
the expected exceptions and its totals add up."""

from __future__ import annotations

import json
import os
import poplib
import smtplib
import socket
import ssl
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gateway.events import Actor, Envelope, MessageRef, Pop3ProxySessionEnded, now
from gateway.services.archive import Archive, StoreConfig

from .conftest import FAST_KDF
from .gateway_helpers import Running, running  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def send(port: int, mailbox_id: str, subject: str, *, tls: bool) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        if tls:
            smtp.starttls(context=insecure())
        smtp.sendmail(
            "a@example.com", [f"mbx-{mailbox_id}@localhost"], f"Subject: {subject}\r\n\r\nx\r\n"
        )


class _From(poplib.POP3):
    """A POP3 client connecting from a chosen loopback address."""

    def __init__(self, source: str, port: int) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=20)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, (self.source, 0))


def retrieve(
    source: str, port: int, mailbox_id: str, password: str, numbers: list[int], delete: bool
) -> None:
    pop = _From(source, port)
    try:
        pop.stls(context=insecure())
        pop.user(mailbox_id)
        pop.pass_(password)
        for n in numbers:
            pop.retr(n)
            if delete:
                pop.dele(n)
    finally:
        pop.quit()


def custody(data: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "custody", "--data-dir", str(data), "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


async def proxy_copy(archive: Archive, mailbox_id: str) -> str:
    """What the POP3 proxy does with a message it relays: store it, then its session's record."""
    writer = archive.begin_message([mailbox_id], source_key="ab" * 32)
    await writer.write(b"Subject: relayed\r\n\r\nrelayed\r\n")
    message_id = (await writer.commit(Envelope(received_at=now(), origin="pop3-proxy")))[mailbox_id]
    await archive.append_control(
        Pop3ProxySessionEnded(
            at=now(),
            actor=Actor(kind="pop3", address="192.0.2.7"),
            session_id="proxy-session",
            listener="pop3",
            client_address="192.0.2.7",
            mailbox_id=mailbox_id,
            target="pop.example.net",
            remote_user="alice",
            client_tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
            stored=(MessageRef(message_id, 30),),
            outcome="quit",
        )
    )
    return message_id


async def test_the_custody_report_accounts_for_every_message(running: Running) -> None:  # noqa: F811
    archive = running.archive
    legal, legal_password = await archive.create_mailbox("legal")
    other, _ = await archive.create_mailbox("other")
    smtp, pop3 = running.port("smtp"), running.port("pop3")
    for n in range(4):
        await trio.to_thread.run_sync(partial(send, smtp, legal.mailbox_id, f"m{n}", tls=True))
    await trio.to_thread.run_sync(lambda: send(smtp, other.mailbox_id, "plain", tls=False))
    ids = [m.message_id for m in archive.messages(legal.mailbox_id)]
    relayed = await proxy_copy(archive, other.mailbox_id)
    # The archive fetches and deletes two from 127.0.0.1; someone reads one from 127.0.0.2.
    await trio.to_thread.run_sync(
        lambda: retrieve("127.0.0.1", pop3, legal.mailbox_id, legal_password, [1, 2], True)
    )
    await trio.to_thread.run_sync(
        lambda: retrieve("127.0.0.2", pop3, legal.mailbox_id, legal_password, [1], False)
    )
    # An administrator purges the last one, never retrieved.
    admin = Actor(kind="admin", address="10.0.0.9")
    await archive.expunge(legal.mailbox_id, [ids[3]], actor=admin)

    data = Path(archive.data.root)
    status, report = await trio.to_thread.run_sync(
        lambda: custody(data, "--allowed-from", "127.0.0.1/32")
    )
    assert status == 1  # exceptions found
    assert report["totals"] == {
        "accepted": 6,
        "retrieved_and_deleted": 2,
        "waiting": 3,
        "deleted_unretrieved": 1,
    }
    exceptions = {(e["kind"], e["message_id"]) for e in report["exceptions"]}
    assert exceptions == {("retrieved-from-elsewhere", ids[2]), ("deleted-unretrieved", ids[3])}
    by_id = {m["message_id"]: m for m in report["messages"]}
    assert by_id[ids[0]]["origin"] == "journal" and by_id[ids[0]]["tls"] == "TLSv1.3"
    assert by_id[ids[0]]["deleted_by"] == "pop3-quit"
    assert [r["client_address"] for r in by_id[ids[0]]["retrievals"]] == ["127.0.0.1"]
    assert by_id[ids[3]]["deleted_by"] == "admin" and by_id[ids[3]]["deleted_from"] == "10.0.0.9"
    assert (
        by_id[relayed]["origin"] == "pop3-proxy" and by_id[relayed]["client_address"] == "192.0.2.7"
    )
    plain = next(
        m
        for m in report["messages"]
        if m["mailbox_id"] == other.mailbox_id and m["origin"] == "journal"
    )
    assert plain["tls"] == "none" and plain["client_address"] == "127.0.0.1"

    # Waiting over a bound, one mailbox, and nothing to report: exit 0.
    status, report = await trio.to_thread.run_sync(lambda: custody(data, "--waiting-over", "0s"))
    assert {e["kind"] for e in report["exceptions"]} == {"waiting-too-long", "deleted-unretrieved"}
    status, report = await trio.to_thread.run_sync(
        lambda: custody(data, "--mailbox", other.mailbox_id)
    )
    assert status == 0 and report["totals"]["accepted"] == 2 and report["exceptions"] == []


async def test_compaction_is_when_a_deleted_messages_bytes_went(tmp_path: Path) -> None:
    data = tmp_path / "data"
    archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF, segment_bytes=64 * 1024))
    try:
        info, _ = await archive.create_mailbox("small segments")
        box, ids = info.mailbox_id, []
        for n in range(12):  # about 24 KiB each: several sealed segments
            writer = archive.begin_message([box])
            await writer.write(b"Subject: %d\r\n\r\n" % n + os.urandom(12_000).hex().encode())
            ids.append((await writer.commit(Envelope(received_at=now(), origin="journal")))[box])
        await archive.expunge(box, ids[:6], actor=Actor(kind="admin"))
        assert await archive.compact(box, min_gain=0.0) > 0
    finally:
        await archive.aclose()
    _status, report = await trio.to_thread.run_sync(lambda: custody(data))
    removed = {m["message_id"] for m in report["messages"] if m["removed_at"]}
    assert removed and removed <= set(ids[:6])
    assert report["totals"]["accepted"] == 12 and report["totals"]["deleted_unretrieved"] == 6
