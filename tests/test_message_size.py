"""The SIZE limit end to end (SPEC.md 12.2, "Size"): it applies to the octets the client sent,
never to the gateway's own Received: field. A message of exactly the advertised SIZE is
stored; one octet more gets the permanent 552 5.3.4 (never a 451, which a journaling server
retries for days), declared (MAIL SIZE=, before any content is read) or found while streaming
(then at most the limit's worth of chunks is ever written)."""

from __future__ import annotations

import os
import smtplib
import socket
from pathlib import Path

import pytest
import trio

from gateway.log import RecordKind, iter_log
from gateway.servers.gateway import Gateway, Listening
from gateway.services.archive import Archive

from .gateway_helpers import make_config, stored_bodies, strip_received

LIMIT = 65_536  # the smallest max_message_size the configuration takes
BIG_LIMIT = 1024 * 1024


def message_of(size: int) -> bytes:
    """A message of exactly ``size`` octets with CRLF line ends and no line starting with a
    dot, so smtplib sends it as is (no stuffing, no line end added)."""
    head = b"Subject: exactly\r\n\r\n"
    full, rest = divmod(size - len(head), 80)
    body = (b"x" * 78 + b"\r\n") * full
    if rest == 1:
        body = body[:-80] + b"x" * 79 + b"\r\n"
    elif rest:
        body += b"y" * (rest - 2) + b"\r\n"
    message = head + body
    assert len(message) == size
    return message


async def start(tmp_path: Path, nursery: trio.Nursery, limit: int) -> tuple[Gateway, int]:
    gateway = Gateway(make_config(tmp_path / "data", max_message_size=limit), environ={})
    listening: list[Listening] = await nursery.start(gateway.run)
    return gateway, next(item.port for item in listening if item.name == "smtp")


def sendmail_code(port: int, address: str, message: bytes, *, declare_size: bool) -> int:
    """The reply code of the end of the data (or of MAIL, when a declared SIZE is refused)."""
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("sender.example")
        options = [f"SIZE={len(message)}"] if declare_size else []
        code, _text = client.mail("journal@example.org", options)
        if code != 250:
            return code
        assert client.rcpt(address)[0] == 250
        code, text = client.data(message)
        if code == 552:
            assert text.startswith(b"5.3.4")
        return code


def bdat_replies(port: int, address: str, chunks: list[bytes]) -> list[bytes]:
    """One session: EHLO, MAIL, RCPT, then BDAT per chunk (the last with LAST); the reply
    to each BDAT."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            lines = [reader.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(reader.readline())
            return lines[-1]

        assert reply().startswith(b"220")
        sock.sendall(b"EHLO sender.example\r\n")
        assert reply().startswith(b"250 ")
        sock.sendall(b"MAIL FROM:<journal@example.org>\r\n")
        assert reply().startswith(b"250")
        sock.sendall(b"RCPT TO:<" + address.encode() + b">\r\n")
        assert reply().startswith(b"250")
        got = []
        for n, chunk in enumerate(chunks):
            last = b" LAST" if n == len(chunks) - 1 else b""
            sock.sendall(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
            got.append(reply())
        sock.sendall(b"QUIT\r\n")
        return got


async def test_a_message_of_exactly_the_advertised_size_is_stored(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    gateway, port = await start(tmp_path, nursery, LIMIT)
    assert gateway.archive is not None
    info, password = await gateway.archive.create_mailbox("journal")
    address = f"mbx-{info.mailbox_id}@localhost"
    exact, near = message_of(LIMIT), message_of(LIMIT - 100)

    def deliver() -> tuple[list[int], list[list[bytes]]]:
        codes = [
            sendmail_code(port, address, exact, declare_size=True),
            sendmail_code(port, address, near, declare_size=True),
            sendmail_code(port, address, exact, declare_size=False),
        ]
        chunked = [
            bdat_replies(port, address, [exact]),
            bdat_replies(port, address, [exact[:30_000], exact[30_000:]]),
        ]
        return codes, chunked

    codes, chunked = await trio.to_thread.run_sync(deliver)
    assert codes == [250, 250, 250]
    assert chunked[0][0].startswith(b"250 2.0.0 Ok: stored as")
    assert chunked[1][0] == b"250 2.0.0 30000 octets received\r\n"
    assert chunked[1][1].startswith(b"250 2.0.0 Ok: stored as")
    key = await gateway.archive.unlock(info.mailbox_id, password)
    bodies = await stored_bodies(gateway.archive, info.mailbox_id, key)
    assert [strip_received(b) for b in bodies] == [exact, near, exact, exact, exact]
    # The stored size counts the Received: field too: it is what POP3 serves.
    assert all(m.size > LIMIT - 100 for m in gateway.archive.messages(info.mailbox_id))
    gateway.request_shutdown()


async def test_one_octet_over_the_limit_is_refused_for_good(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    gateway, port = await start(tmp_path, nursery, LIMIT)
    assert gateway.archive is not None
    info, _password = await gateway.archive.create_mailbox("journal")
    address = f"mbx-{info.mailbox_id}@localhost"
    over = message_of(LIMIT + 1)

    def deliver() -> tuple[list[int], list[list[bytes]]]:
        codes = [
            sendmail_code(port, address, over, declare_size=True),  # 552 at MAIL
            sendmail_code(port, address, over, declare_size=False),  # 552 after the data
        ]
        chunked = [
            bdat_replies(port, address, [over]),
            bdat_replies(port, address, [over[:40_000], over[40_000:]]),
        ]
        return codes, chunked

    codes, chunked = await trio.to_thread.run_sync(deliver)
    assert codes == [552, 552]
    refused = b"552 5.3.4 Message size exceeds fixed limit\r\n"
    assert chunked == [[refused], [b"250 2.0.0 40000 octets received\r\n", refused]]
    assert gateway.archive.messages(info.mailbox_id) == []
    gateway.request_shutdown()


@pytest.mark.parametrize("declare_size", [True, False])
async def test_an_oversize_message_leaves_at_most_the_limit_in_orphan_chunks(
    tmp_path: Path, declare_size: bool
) -> None:
    """Declared with SIZE=, nothing is written at all; undeclared, writing stops at the
    limit (4 chunks of 256 KiB for 1 MiB), and those orphans are all that is left."""
    async with trio.open_nursery() as nursery:
        gateway, port = await start(tmp_path, nursery, BIG_LIMIT)
        assert gateway.archive is not None
        info, _password = await gateway.archive.create_mailbox("journal")
        address = f"mbx-{info.mailbox_id}@localhost"
        # Incompressible lines, so every 256 KiB of plaintext is a chunk of about that size.
        lines = b"".join(os.urandom(39).hex().encode() + b"\r\n" for _ in range(40_000))
        over = b"Subject: big\r\n\r\n" + lines[: 3 * BIG_LIMIT]
        code = await trio.to_thread.run_sync(
            lambda: sendmail_code(port, address, over, declare_size=declare_size)
        )
        assert code == 552
        gateway.request_shutdown()
    archive = await Archive.open(tmp_path / "data")
    try:
        assert archive.messages(info.mailbox_id) == []
    finally:
        await archive.aclose()
    # No message was committed: every chunk record in the log is an orphan.
    log = tmp_path / "data" / "mailboxes" / info.mailbox_id / "log"
    orphans = [
        r for r in iter_log(log, bytes.fromhex(info.mailbox_id)) if r.kind == RecordKind.CHUNK
    ]
    if declare_size:
        assert orphans == []
    else:
        assert 1 <= len(orphans) <= BIG_LIMIT // (256 * 1024)
