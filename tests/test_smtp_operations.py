"""Running the SMTP service: session limits, graceful shutdown, certificate reload, a full
disk."""

from __future__ import annotations

import hashlib
import os
import smtplib
import ssl
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.events import GatewayStopped, decode_control_event
from gateway.log import iter_log
from gateway.servers.gateway import Gateway, Listening
from gateway.services.archive import CONTROL_LOG_ID
from gateway.tls import certificate_summary, make_self_signed

from .gateway_helpers import make_config


async def start(nursery: trio.Nursery, config_path: Path, **smtp: object) -> tuple[Gateway, int]:
    gateway = Gateway(make_config(config_path, **smtp))
    listening: list[Listening] = await nursery.start(gateway.run)
    return gateway, next(item.port for item in listening if item.name == "smtp")


async def read_reply(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        more = await stream.receive_some(1024)
        if not more:
            break
        data += more
    return data


async def test_sessions_beyond_the_per_client_limit_get_421(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    _gateway, port = await start(nursery, tmp_path / "data", max_sessions_per_client=2)
    streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
    replies = [await read_reply(s) for s in streams]
    assert [r[:3] for r in replies] == [b"220", b"220", b"421"]
    assert b"4.7.0" in replies[2]
    for stream in streams:
        await stream.aclose()
    # Slots are given back when sessions end.
    await trio.sleep(0.05)
    again = await trio.open_tcp_stream("127.0.0.1", port)
    assert (await read_reply(again)).startswith(b"220")
    await again.aclose()


async def test_shutdown_stops_accepting_and_lets_sessions_finish(tmp_path: Path) -> None:
    gateway = Gateway(make_config(tmp_path / "data"))
    async with trio.open_nursery() as nursery:
        listening: list[Listening] = await nursery.start(gateway.run)
        port = next(item.port for item in listening if item.name == "smtp")
        assert gateway.archive is not None
        info, _password = await gateway.archive.create_mailbox("x")
        address = f"mbx-{info.mailbox_id}@localhost"
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await read_reply(stream)).startswith(b"220")
        await stream.send_all(
            b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<" + address.encode() + b">\r\nDATA\r\n"
        )
        got = b""
        while b"354" not in got:
            got += await stream.receive_some(1024)
        gateway.request_shutdown()
        await trio.sleep(0.1)
        with pytest.raises(OSError, match="connect"):
            await trio.open_tcp_stream("127.0.0.1", port)
        # The session in progress may still finish its message within the grace period.
        await stream.send_all(b"Subject: last\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        got = b""
        while b"221" not in got:
            more = await stream.receive_some(1024)
            if not more:
                break
            got += more
        assert b"250 2.0.0 Ok: stored as" in got
        await stream.aclose()
    events = [
        decode_control_event(r.body)
        for r in iter_log(tmp_path / "data" / "control", CONTROL_LOG_ID)
    ]
    assert isinstance(events[-1], GatewayStopped)


async def test_sessions_past_the_grace_period_are_told_and_cut(tmp_path: Path) -> None:
    config = msgspec.structs.replace(make_config(tmp_path / "data"), shutdown_grace=0.2)
    gateway = Gateway(config)
    async with trio.open_nursery() as nursery:
        listening: list[Listening] = await nursery.start(gateway.run)
        port = next(item.port for item in listening if item.name == "smtp")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert (await read_reply(stream)).startswith(b"220")
        gateway.request_shutdown()
        with trio.fail_after(5):
            last = await read_reply(stream)
        assert last.startswith(b"421 4.3.2")
        await stream.aclose()


async def test_reload_swaps_the_certificate_for_new_sessions(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    gateway, port = await start(nursery, tmp_path / "data")
    cert = tmp_path / "data" / "tls" / "cert.pem"
    key = tmp_path / "data" / "tls" / "key.pem"

    def fingerprint_seen() -> str:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.starttls(context=context)
            der = client.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        return hashlib.sha256(der).digest().hex(":").upper()

    _subject, before, _ = certificate_summary(cert)
    assert await trio.to_thread.run_sync(fingerprint_seen) == before
    new_cert, new_key = make_self_signed("renewed.example")
    key.write_bytes(new_key)
    cert.write_bytes(new_cert)
    gateway.request_reload()
    await trio.sleep(0.2)
    _subject, after, _ = certificate_summary(cert)
    assert after != before
    assert await trio.to_thread.run_sync(fingerprint_seen) == after


async def test_a_full_disk_answers_452_and_keeps_nothing(
    small_disk: Path, nursery: trio.Nursery
) -> None:
    gateway, port = await start(nursery, small_disk / "data")
    assert gateway.archive is not None
    info, _ = await gateway.archive.create_mailbox("x")
    address = f"mbx-{info.mailbox_id}@localhost"

    def fill() -> list[int]:
        codes = []
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo("x")
            for n in range(60):
                client.mail("a@b.c")
                client.rcpt(address)
                code, _ = client.data(b"Subject: %d\r\n\r\n" % n + os.urandom(150_000))
                codes.append(code)
                if code != 250 and codes.count(code) > 2:
                    break
        return codes

    codes = await trio.to_thread.run_sync(fill)
    assert 452 in codes, codes
    stored = len(gateway.archive.messages(info.mailbox_id))
    assert stored == codes.count(250)


async def test_a_silent_client_times_out_with_421(tmp_path: Path, nursery: trio.Nursery) -> None:
    _gateway, port = await start(nursery, tmp_path / "data", command_timeout=0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    assert (await read_reply(stream)).startswith(b"220")
    with trio.fail_after(5):
        assert (await read_reply(stream)).startswith(b"421 4.4.2")
        assert await stream.receive_some(1024) == b""  # and the connection is closed
    await stream.aclose()


async def test_sessions_beyond_the_total_limit_get_421(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    _gateway, port = await start(nursery, tmp_path / "data", max_sessions=3)
    streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
    replies = [await read_reply(s) for s in streams]
    assert [r[:9] for r in replies] == [b"220 local", b"220 local", b"220 local", b"421 4.7.0"]
    for stream in streams:
        await stream.aclose()


async def test_a_client_that_stalls_in_data_times_out(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    gateway, port = await start(nursery, tmp_path / "data", data_timeout=0.3, command_timeout=30.0)
    assert gateway.archive is not None
    info, _ = await gateway.archive.create_mailbox("x")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    assert (await read_reply(stream)).startswith(b"220")
    rcpt = f"RCPT TO:<mbx-{info.mailbox_id}@localhost>\r\n".encode()
    await stream.send_all(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n" + rcpt + b"DATA\r\n")
    got = b""
    while b"354 " not in got:
        got += await stream.receive_some(4096)
    await stream.send_all(b"Subject: half\r\n\r\nnever finished")
    with trio.fail_after(5):
        assert (await read_reply(stream)).startswith(b"421 4.4.2")
    await stream.aclose()
    await trio.sleep(0.1)
    assert gateway.archive.messages(info.mailbox_id) == []  # nothing of it is visible
