"""POP3 retrieval end to end: a real gateway, Python's smtplib to fill mailboxes and poplib
(over STLS and POP3S) to fetch and delete, as an archive does."""

from __future__ import annotations

import base64
import poplib
import random
import smtplib
import socket
import ssl
from pathlib import Path
from typing import Literal, cast

import msgspec
import pytest
import trio

from gateway.events import MailboxStatus
from gateway.log import iter_log
from gateway.servers import pop3_retrieval as retrieval_module
from gateway.servers.gateway import Gateway, Listening
from gateway.services._common import CONTROL_LOG_ID
from gateway.store import _journal as journal_module
from gateway.store import _wire as wire_module

from .gateway_helpers import Running, make_config, strip_received
from .peers import fetchmail


def locked(gateway: Gateway) -> frozenset[str]:
    """The maildrops a POP3 session holds now."""
    assert gateway.journal is not None
    return gateway.journal.locked_maildrops


async def new_mailbox(running: Running, name: str = "box") -> tuple[str, str, str]:
    info, password = await running.archive.create_mailbox(name)
    return info.mailbox_id, f"mbx-{info.mailbox_id}@localhost", password


def deliver(port: int, address: str, bodies: list[bytes]) -> None:
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        for body in bodies:
            smtp.sendmail("sender@example.org", [address], body)


def pop3s(running: Running) -> poplib.POP3_SSL:
    return poplib.POP3_SSL("localhost", running.port("pop3s"), context=running.context())


def pop3_stls(running: Running) -> poplib.POP3:
    client = poplib.POP3("localhost", running.port("pop3"))
    client.stls(running.context())
    return client


def retr(client: poplib.POP3, n: int) -> bytes:
    _resp, lines, _octets = client.retr(n)
    return b"".join(line + b"\r\n" for line in lines)


async def test_fetch_and_delete_over_stls_and_pop3s(running: Running) -> None:
    mailbox_id, address, password = await new_mailbox(running)
    bodies = [f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode() for i in range(5)]
    await trio.to_thread.run_sync(deliver, running.port("smtp"), address, bodies)
    stored = running.archive.messages(mailbox_id)

    def over_stls() -> None:
        client = pop3_stls(running)
        client.user(mailbox_id)
        assert client.pass_(password).startswith(b"+OK maildrop has 5 messages")
        count, size = client.stat()
        assert (count, size) == (5, sum(m.size for m in stored))
        _resp, listing, _ = client.list()
        assert listing == [f"{n} {m.size}".encode() for n, m in enumerate(stored, 1)]
        _resp, uidls, _ = client.uidl()
        assert uidls == [f"{n} {m.message_id}".encode() for n, m in enumerate(stored, 1)]
        assert client.uidl(2) == f"+OK 2 {stored[1].message_id}".encode()
        for n in range(1, 6):
            got = retr(client, n)
            assert len(got) == stored[n - 1].size  # LIST's size is what RETR sends
            assert strip_received(got) == bodies[n - 1]
        _resp, top, _ = client.top(1, 0)
        assert top[-1] == b"" and top[-2].startswith(b"Subject: 0")
        client.dele(1)
        client.dele(2)
        with pytest.raises(poplib.error_proto, match="already deleted"):
            client.retr(1)
        assert client.stat()[0] == 3
        client.rset()
        assert client.stat()[0] == 5
        client.dele(1)
        client.dele(2)
        assert client.quit().startswith(b"+OK")

    await trio.to_thread.run_sync(over_stls)
    assert [m.message_id for m in running.archive.messages(mailbox_id)] == [
        m.message_id for m in stored[2:]
    ]

    def over_pop3s() -> None:
        client = pop3s(running)
        client.user(address.upper())  # the address, in any case
        client.pass_(password)
        assert client.stat()[0] == 3
        assert strip_received(retr(client, 1)) == bodies[2]
        with pytest.raises(poplib.error_proto, match="no such message"):
            client.retr(4)
        client.quit()

    await trio.to_thread.run_sync(over_pop3s)


async def test_a_listing_in_many_pages_is_whole_and_as_of_the_login(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the journal sent a maildrop's listing in one frame, which over 35,000
    messages (4 MiB) ended the worker's connection at every login to it. Here frames are
    cut to 64 KiB and pages to 4 KiB: 600 messages go over in four pages. LIST and UIDL go
    out 50 lines at a time."""
    monkeypatch.setattr(wire_module, "MAX_FRAME", 64 * 1024)
    monkeypatch.setattr(journal_module, "LIST_PAGE_BYTES", 4 * 1024)
    monkeypatch.setattr(retrieval_module, "LISTING_BATCH", 50)
    mailbox_id, address, password = await new_mailbox(running)
    bodies = [b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(600)]
    await trio.to_thread.run_sync(deliver, running.port("smtp"), address, bodies)

    def fetch() -> tuple[int, list[bytes], list[bytes]]:
        client = pop3s(running)
        try:
            client.user(mailbox_id)
            client.pass_(password)
            deliver(running.port("smtp"), address, [b"Subject: later\r\n\r\nlater\r\n"])
            count, size = client.stat()
            uidls = client.uidl()[1]
            seventh = int(cast(bytes, client.list(7)).split()[2])
            client.dele(7)
            listing = client.list()[1]
            assert len(listing) == count - 1 and not [x for x in listing if x.startswith(b"7 ")]
            assert sum(int(line.split()[1]) for line in listing) + seventh == size
            client.rset()
            return count, uidls, [retr(client, n) for n in range(1, count + 1)]
        finally:
            client.quit()

    count, uidls, got = await trio.to_thread.run_sync(fetch)
    assert count == 600 and len(set(uidls)) == 600
    assert sorted(strip_received(b) for b in got) == sorted(bodies)
    assert running.gateway.journal is not None
    assert running.gateway.journal.open_listings == 0


async def test_auth_plain_and_no_credentials_in_the_clear(running: Running) -> None:
    mailbox_id, _address, password = await new_mailbox(running)

    def check() -> None:
        client = poplib.POP3("localhost", running.port("pop3"))
        caps = client.capa()
        assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] TLS required"):
            client.user(mailbox_id)
        client.stls(running.context())
        caps = client.capa()
        assert "USER" in caps and caps["SASL"] == ["PLAIN"] and "STLS" not in caps
        token = base64.b64encode(f"\0{mailbox_id}\0{password}".encode()).decode()
        client.sock.sendall(f"AUTH PLAIN {token}\r\n".encode())
        assert client.file.readline().startswith(b"+OK")
        assert client.stat() == (0, 0)
        client.quit()

    await trio.to_thread.run_sync(check)


async def test_wrong_credentials_all_look_alike(running: Running) -> None:
    first, _a, first_password = await new_mailbox(running, "first")
    second, _b, second_password = await new_mailbox(running, "second")
    attempts = [
        (first, "not the password"),  # wrong password
        (first, second_password),  # another mailbox's password
        ("0123456789abcdef0123456789abcdef", first_password),  # no such mailbox
        ("someone@example.org", first_password),  # not a mailbox name at all
    ]

    def attempt(username: str, password: str) -> str:
        client = pop3s(running)
        client.user(username)
        try:
            client.pass_(password)
        except poplib.error_proto as exc:
            return str(exc)
        finally:
            client.close()
        return "+OK"

    answers = [await trio.to_thread.run_sync(attempt, u, p) for u, p in attempts]
    assert len(set(answers)) == 1
    assert answers[0] == "b'-ERR [AUTH] invalid credentials'"
    # The right password on the wrong mailbox, then both right.
    assert await trio.to_thread.run_sync(attempt, second, first_password) == answers[0]
    assert await trio.to_thread.run_sync(attempt, second, second_password) == "+OK"

    def logins() -> list[bool]:
        events = [
            msgspec.msgpack.decode(r.body)
            for r in iter_log(running.archive.data.control_dir, CONTROL_LOG_ID)
        ]
        return [e["success"] for e in events if e["type"] == "Pop3Login"]

    with trio.fail_after(10):  # audit records go to the journal without being waited for
        while len(logins()) < 6:  # noqa: ASYNC110 - the log has no event to wait on
            await trio.sleep(0.05)
    assert logins() == [False] * 5 + [True]
    raw = b"".join(r.body for r in iter_log(running.archive.data.control_dir, CONTROL_LOG_ID))
    assert first_password.encode() not in raw and b"not the password" not in raw


async def test_failed_logins_are_throttled(running: Running) -> None:
    mailbox_id, _address, password = await new_mailbox(running)

    def attempts() -> list[str]:
        answers = []
        for guess in [*(f"guess {i}" for i in range(10)), password]:
            client = pop3s(running)
            client.user(mailbox_id)
            try:
                answers.append(client.pass_(guess).decode())
            except poplib.error_proto as exc:
                answers.append(str(exc))
            client.close()
        return answers

    answers = await trio.to_thread.run_sync(attempts)
    assert all("invalid credentials" in a for a in answers[:10])
    assert "too many failed logins" in answers[10]  # even the right password, for now


async def test_maildrop_lock(running: Running) -> None:
    mailbox_id, _address, password = await new_mailbox(running)

    def two_sessions() -> None:
        first = pop3s(running)
        first.user(mailbox_id)
        first.pass_(password)
        second = pop3s(running)
        second.user(mailbox_id)
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            second.pass_(password)
        second.close()
        first.quit()
        third = pop3s(running)  # the lock went with the first session
        third.user(mailbox_id)
        third.pass_(password)
        third.quit()

    await trio.to_thread.run_sync(two_sessions)


async def test_dropped_connection_deletes_nothing(running: Running) -> None:
    mailbox_id, address, password = await new_mailbox(running)
    await trio.to_thread.run_sync(
        deliver, running.port("smtp"), address, [b"Subject: a\r\n\r\nx\r\n"] * 3
    )

    def delete_then_drop() -> None:
        client = pop3s(running)
        client.user(mailbox_id)
        client.pass_(password)
        for n in (1, 2, 3):
            client.dele(n)
        client.sock.shutdown(socket.SHUT_RDWR)
        client.close()

    await trio.to_thread.run_sync(delete_then_drop)
    assert running.gateway.pop3_server is not None
    with trio.fail_after(5):
        while mailbox_id in locked(running.gateway):  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert len(running.archive.messages(mailbox_id)) == 3


async def test_mail_arriving_during_a_session_waits_for_the_next(running: Running) -> None:
    mailbox_id, address, password = await new_mailbox(running)
    await trio.to_thread.run_sync(deliver, running.port("smtp"), address, [b"Subject: 1\r\n\r\n"])

    def session() -> tuple[int, int]:
        client = pop3s(running)
        client.user(mailbox_id)
        client.pass_(password)
        deliver(running.port("smtp"), address, [b"Subject: 2\r\n\r\n"])
        during = client.stat()[0]
        client.dele(1)
        client.quit()
        again = pop3s(running)
        again.user(mailbox_id)
        again.pass_(password)
        after = again.stat()[0]
        again.quit()
        return during, after

    assert await trio.to_thread.run_sync(session) == (1, 1)


async def test_suspended_mailboxes_can_still_be_retrieved(running: Running) -> None:
    mailbox_id, address, password = await new_mailbox(running)
    await trio.to_thread.run_sync(deliver, running.port("smtp"), address, [b"Subject: s\r\n\r\n"])
    await running.archive.update_mailbox(mailbox_id, status=MailboxStatus.SUSPENDED)

    def fetch() -> int:
        client = pop3s(running)
        client.user(mailbox_id)
        client.pass_(password)
        count = client.stat()[0]
        client.quit()
        return count

    assert await trio.to_thread.run_sync(fetch) == 1


def generated_corpus(rng: random.Random, count: int) -> list[bytes]:
    """Messages that test the edges: 8-bit text, lines starting with '.', a lone '.' line,
    long lines, an empty body, CRLF at chunk edges."""
    bodies = []
    for i in range(count):
        lines = [f"Subject: message {i}".encode(), f"X-Seq: {i}".encode(), b""]
        for _ in range(rng.randrange(0, 30)):
            kind = rng.randrange(7)
            if kind == 0:
                lines.append(b".")
            elif kind == 1:
                lines.append(b"." + bytes(rng.randrange(33, 127) for _ in range(rng.randrange(40))))
            elif kind == 2:
                lines.append("Grüße, ça va? ünïcödé".encode())
            elif kind == 3:
                lines.append(b"x" * rng.randrange(900, 990))
            elif kind == 4:
                lines.append(b"")
            else:
                lines.append(bytes(rng.randrange(32, 256) for _ in range(rng.randrange(80))))
        bodies.append(b"\r\n".join(lines) + b"\r\n")
    return bodies


@pytest.mark.slow
async def test_thousand_messages_and_25_mib_round_trip_and_survive_restart(
    tmp_path: Path,
) -> None:
    """1,000 generated messages and one of 25 MiB in through SMTP, out through POP3,
    byte-identical in order (plus the trace field); after DELE and QUIT they are gone, and
    stay gone after a restart."""
    rng = random.Random(1939)
    bodies = generated_corpus(rng, 1000)
    big = b"Subject: big\r\n\r\n" + b"".join(
        b"." * (i % 3) + bytes(rng.randrange(33, 127) for _ in range(70)) + b"\r\n"
        for i in range(25 * 1024 * 1024 // 72)
    )
    bodies.insert(500, big)
    config = make_config(tmp_path / "data")
    cafile = str(tmp_path / "data" / "tls" / "cert.pem")  # made by the first start

    def fetch_all(
        port: int, mailbox_id: str, password: str, delete: bool, drop: bool
    ) -> list[bytes]:
        context = ssl.create_default_context(cafile=cafile)
        client = poplib.POP3_SSL("localhost", port, context=context)
        client.user(mailbox_id)
        client.pass_(password)
        got = []
        count, _size = client.stat()
        for n in range(1, count + 1):
            got.append(retr(client, n))
            if delete:
                client.dele(n)
        if drop:
            client.close()
        else:
            client.quit()
        return got

    async with trio.open_nursery() as first_run:
        gateway = Gateway(config, environ={})
        listening: list[Listening] = await first_run.start(gateway.run)
        ports = {item.name: item.port for item in listening}
        assert gateway.archive is not None and gateway.pop3_server is not None
        info, password = await gateway.archive.create_mailbox("corpus")
        address = f"mbx-{info.mailbox_id}@localhost"
        await trio.to_thread.run_sync(deliver, ports["smtp"], address, bodies)
        # Everything deleted, then the connection dropped: all still there.
        first = await trio.to_thread.run_sync(
            fetch_all, ports["pop3s"], info.mailbox_id, password, True, True
        )
        assert [strip_received(m) for m in first] == bodies
        with trio.fail_after(10):
            while info.mailbox_id in locked(gateway):  # noqa: ASYNC110
                await trio.sleep(0.01)
        second = await trio.to_thread.run_sync(
            fetch_all, ports["pop3s"], info.mailbox_id, password, True, False
        )
        assert second == first
        assert gateway.archive.messages(info.mailbox_id) == []
        gateway.request_shutdown()

    async with trio.open_nursery() as second_run:
        again = Gateway(config, environ={})
        listening = await second_run.start(again.run)
        ports = {item.name: item.port for item in listening}
        left = await trio.to_thread.run_sync(
            fetch_all, ports["pop3s"], info.mailbox_id, password, False, False
        )
        assert left == []
        again.request_shutdown()


async def test_autologout_deletes_nothing_and_retrieval_is_recorded(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    config = make_config(tmp_path / "data")
    config = msgspec.structs.replace(
        config, pop3=msgspec.structs.replace(config.pop3, idle_timeout=0.5)
    )
    gateway = Gateway(config, environ={})
    listening: list[Listening] = await nursery.start(gateway.run)
    ports = {item.name: item.port for item in listening}
    archive = gateway.archive
    assert archive is not None
    info, password = await archive.create_mailbox("idle")
    address = f"mbx-{info.mailbox_id}@localhost"
    await trio.to_thread.run_sync(deliver, ports["smtp"], address, [b"Subject: i\r\n\r\n"])
    cafile = str(tmp_path / "data" / "tls" / "cert.pem")

    def idle() -> bytes:
        context = ssl.create_default_context(cafile=cafile)
        client = poplib.POP3_SSL("localhost", ports["pop3s"], context=context)
        client.user(info.mailbox_id)
        client.pass_(password)
        retr(client, 1)
        client.dele(1)
        line: bytes = client.file.readline()  # nothing sent: the server speaks first
        client.close()
        return line

    assert await trio.to_thread.run_sync(idle) == b"-ERR autologout: idle for too long\r\n"
    assert len(archive.messages(info.mailbox_id)) == 1
    with trio.fail_after(5):  # the session's end is recorded just after its last line
        while info.mailbox_id not in archive.state.last_retrieval:  # noqa: ASYNC110
            await trio.sleep(0.01)
    gateway.request_shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_fetchmail_fetches_and_deletes_everything(
    running: Running, tmp_path: Path, tls: Literal["starttls", "implicit"]
) -> None:
    """Debian's fetchmail, a POP3 client nobody here wrote, empties a mailbox the SMTP side
    filled: every message byte for byte, in order, then gone from the gateway."""
    mailbox_id, address, password = await new_mailbox(running)
    bodies = generated_corpus(random.Random(tls), 60)
    await trio.to_thread.run_sync(deliver, running.port("smtp"), address, bodies)
    port = running.port("pop3" if tls == "starttls" else "pop3s")
    fetched = await trio.to_thread.run_sync(
        lambda: fetchmail(
            "127.0.0.1",
            port,
            user=mailbox_id,
            password=password,
            ca_file=running.cafile,
            tmp_dir=tmp_path,
            tls=tls,
        )
    )
    assert [strip_received(m) for m in fetched.messages] == bodies, fetched.log[-2000:]
    assert running.archive.messages(mailbox_id) == []


async def test_a_session_of_many_messages_writes_its_record_in_parts(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's refs past what one record holds go ahead in Pop3SessionProgress records
    (a session that fetched and deleted a million messages used to lose its record)."""
    monkeypatch.setattr(retrieval_module, "REFS_PER_RECORD", 3)
    mailbox_id, address, password = await new_mailbox(running)
    await trio.to_thread.run_sync(
        deliver, running.port("smtp"), address, [b"Subject: %d\r\n\r\nx\r\n" % n for n in range(5)]
    )

    def fetch_all() -> None:
        client = pop3s(running)
        client.user(mailbox_id)
        client.pass_(password)
        for n in range(1, 6):
            retr(client, n)
            client.dele(n)
        client.quit()

    await trio.to_thread.run_sync(fetch_all)

    def records() -> list[dict[str, object]]:
        events = [
            msgspec.msgpack.decode(r.body)
            for r in iter_log(running.archive.data.control_dir, CONTROL_LOG_ID)
        ]
        return [e for e in events if str(e["type"]).startswith("Pop3Session")]

    with trio.fail_after(10):
        while not [e for e in records() if e["type"] == "Pop3SessionEnded"]:  # noqa: ASYNC110
            await trio.sleep(0.05)
    parts = records()
    assert [e["type"] for e in parts][-1] == "Pop3SessionEnded"
    assert all(len(e["retrieved"]) + len(e["deleted"]) <= 3 for e in parts)  # type: ignore[arg-type]
    retrieved = [ref for e in parts for ref in e["retrieved"]]  # type: ignore[attr-defined]
    deleted = [ref for e in parts for ref in e["deleted"]]  # type: ignore[attr-defined]
    assert len(retrieved) == len(deleted) == 5
    assert [r["message_id"] for r in retrieved] == [d["message_id"] for d in deleted]
