"""Interop with SMTP software nobody here wrote: swaks (pipelining, STARTTLS, SMTPS) and a
real Postfix relaying journal copies to the gateway over STARTTLS, the way a journaling MTA
does. Every message is read back from the log and compared byte for byte. Both peers come from
tests/peers."""

from __future__ import annotations

import functools
import smtplib
from email.utils import formatdate, make_msgid
from pathlib import Path

import pytest
import trio

from .gateway_helpers import Running, stored_bodies, strip_received
from .peers import private_postfix, swaks

pytestmark = pytest.mark.slow


async def test_swaks_pipelining_starttls_and_smtps(running: Running) -> None:
    info, password = await running.archive.create_mailbox("swaks")
    to = f"mbx-{info.mailbox_id}@localhost"
    plain = running.ports["smtp"]
    tls = running.ports["smtps"]
    runs = [
        functools.partial(swaks, "127.0.0.1", plain, pipeline=True),
        functools.partial(swaks, "127.0.0.1", plain, tls=True, pipeline=True),
        functools.partial(swaks, "127.0.0.1", tls, tls_on_connect=True),
    ]
    for n, run in enumerate(runs):
        # swaks ends the data with CRLF "." CRLF itself, so the body's last CRLF is its own.
        body = f"Subject: swaks {n}\r\n\r\nbody {n}\r\n.dot line".encode()
        command = functools.partial(
            run, to=to, sender="a@example.com", data=body, helo="swaks.test", check=False
        )
        done = await trio.to_thread.run_sync(command)
        assert done.returncode == 0, done.stdout + done.stderr
    key = await running.archive.unlock(info.mailbox_id, password)
    stored = [strip_received(b) for b in await stored_bodies(running.archive, info.mailbox_id, key)]
    assert [s.endswith(f"body {n}\r\n.dot line\r\n".encode()) for n, s in enumerate(stored)] == [
        True
    ] * 3
    assert b"Subject: swaks 2" in stored[2]


async def test_postfix_relays_journal_copies_over_starttls(
    running: Running, tmp_path: Path
) -> None:
    info, password = await running.archive.create_mailbox("journal")
    to = f"mbx-{info.mailbox_id}@localhost"
    originals = []
    for n in range(20):
        originals.append(
            (
                f"From: user{n}@example.com\r\nTo: {to}\r\nSubject: journal {n}\r\n"
                f"Date: {formatdate()}\r\nMessage-ID: {make_msgid()}\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n"
                f"8-bit body {n} \u00e9\u00e8\r\n.leading dot\r\n" + ("x" * 76 + "\r\n") * (n * 13)
                # Lines under 998 octets: Postfix itself folds longer ones (smtp_line_length_limit).
            ).encode()
        )

    def relay() -> str:
        with private_postfix(
            tmp_path,
            relay_port=running.ports["smtp"],
            tls="encrypt",
            ca_file=running.cafile,
        ) as postfix:
            with smtplib.SMTP("127.0.0.1", postfix.port) as client:
                for message in originals:
                    client.sendmail("journal@example.com", [to], message)
            postfix.flush()
            postfix.wait_until_queue_empty(90)
            return postfix.log_text()

    log = await trio.to_thread.run_sync(relay)
    assert "TLS connection established to 127.0.0.1" in log, log[-3000:]
    key = await running.archive.unlock(info.mailbox_id, password)
    stored = await stored_bodies(running.archive, info.mailbox_id, key)
    assert len(stored) == 20
    for raw in stored:
        assert b"with ESMTPS id" in raw.split(b"\r\n\r\n", 1)[0]
    # Postfix adds its own Received: field (and nothing else: Date and Message-ID are there);
    # after it, every byte is what was sent. Order is Postfix's delivery order.
    bodies = sorted(strip_received(strip_received(raw)) for raw in stored)
    assert bodies == sorted(originals)
