"""Attacks on the POP3 logins of a running gateway (issue 12), each test named after one.
Clients bind to other loopback addresses (127.0.0.0/8 is all loopback on Linux) to play
guessers on rotating addresses; the archive logs in from 127.0.0.1."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

from gateway.config import Config, KdfSettings, ProxyConfig
from gateway.servers.gateway import Gateway, Listening

from .gateway_helpers import make_config


class POP3Client:
    """A minimal POP3S client over trio that can pick its source address."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, port: int, context: ssl.SSLContext, source: str = "127.0.0.1"
    ) -> AsyncIterator[POP3Client]:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        stream = trio.SSLStream(trio.SocketStream(sock), context, server_hostname="localhost")
        client = cls(stream)
        try:
            assert (await client.line()).startswith("+OK")
            yield client
        finally:
            await trio.aclose_forcefully(stream)

    async def line(self) -> str:
        while b"\r\n" not in self.buffer:
            data = await self.stream.receive_some(4096)
            if not data:
                raise EOFError("connection closed")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line.decode()

    async def command(self, line: str) -> str:
        await self.stream.send_all(line.encode() + b"\r\n")
        return await self.line()

    async def login(self, username: str, password: str) -> str:
        assert (await self.command(f"USER {username}")).startswith("+OK")
        return await self.command(f"PASS {password}")


async def login_once(
    port: int, context: ssl.SSLContext, username: str, password: str, source: str = "127.0.0.1"
) -> str:
    async with POP3Client.connect(port, context, source) as client:
        reply = await client.login(username, password)
        if reply.startswith("+OK"):
            await client.command("QUIT")
        return reply


@dataclass
class Served:
    gateway: Gateway
    port: int
    context: ssl.SSLContext
    ports: dict[str, int]


@asynccontextmanager
async def serve(tmp_path: Path, config: Config) -> AsyncIterator[Served]:
    gateway = Gateway(config, environ={})
    async with trio.open_nursery() as nursery:
        listening: list[Listening] = await nursery.start(gateway.run)
        ports = {item.name: item.port for item in listening}
        cafile = tmp_path / "data" / "tls" / "cert.pem"
        yield Served(gateway, ports["pop3s"], ssl.create_default_context(cafile=str(cafile)), ports)
        gateway.request_shutdown()


def attack_config(tmp_path: Path, **pop3: object) -> Config:
    config = make_config(tmp_path / "data")
    return msgspec.structs.replace(
        config,
        shutdown_grace=0.5,
        pop3=msgspec.structs.replace(config.pop3, **pop3),
    )


# -- item 7: the lockout was keyed on the login text ----------------------------------------


async def test_lockout_evasion_by_respelling_the_mailbox(tmp_path: Path) -> None:
    """Ten failures as <id> locked out only the text "<id>": the address, upper case or any
    other domain logged in at once. The lockout is the mailbox's, and only the configured
    mail domain names a mailbox."""
    async with serve(tmp_path, attack_config(tmp_path)) as served:
        archive = served.gateway.archive
        assert archive is not None
        info, password = await archive.create_mailbox("journal")
        mailbox_id = info.mailbox_id
        for n in range(10):
            reply = await login_once(
                served.port, served.context, mailbox_id, f"guess {n}", f"127.0.1.{n + 2}"
            )
            assert reply == "-ERR [AUTH] invalid credentials"
        for n, spelling in enumerate(
            [mailbox_id.upper(), f"mbx-{mailbox_id}@localhost", f"MBX-{mailbox_id}@LOCALHOST"]
        ):
            reply = await login_once(
                served.port, served.context, spelling, password, f"127.0.2.{n + 2}"
            )
            assert reply == "-ERR [AUTH] too many failed logins, try again later", spelling
        # Another domain is no address of this gateway's mailboxes, whatever the password.
        elsewhere = f"mbx-{mailbox_id}@elsewhere.example"
        reply = await login_once(served.port, served.context, elsewhere, password, "127.0.3.2")
        assert reply == "-ERR [AUTH] invalid credentials"


async def test_journal_address_lockout_does_not_lock_the_archive_out(tmp_path: Path) -> None:
    """Anyone who knows the journal address could lock the archive out with ten bad logins
    under the archive's own spelling. The archive, which logged in from its address before,
    keeps getting in; everyone else waits the lockout out."""
    async with serve(tmp_path, attack_config(tmp_path)) as served:
        archive = served.gateway.archive
        assert archive is not None
        info, password = await archive.create_mailbox("journal")
        mailbox_id = info.mailbox_id
        reply = await login_once(served.port, served.context, mailbox_id, password)
        assert reply.startswith("+OK maildrop")
        for n in range(15):
            reply = await login_once(
                served.port, served.context, mailbox_id, f"guess {n}", f"127.0.1.{n + 2}"
            )
            assert reply.startswith("-ERR [AUTH]")
        assert reply == "-ERR [AUTH] too many failed logins, try again later"
        reply = await login_once(served.port, served.context, mailbox_id, password)
        assert reply.startswith("+OK maildrop"), reply
        # A client that never logged in from its address is locked out, right password or not.
        reply = await login_once(served.port, served.context, mailbox_id, password, "127.0.4.2")
        assert reply == "-ERR [AUTH] too many failed logins, try again later"


# -- item 6: Argon2id as a lever ------------------------------------------------------------

# Argon2id costing tens of milliseconds (the tests' usual parameters cost microseconds, and a
# queue of them would not show); guessers get no lockout, so the unlock order alone must
# keep the archive's login quick.
LEVER_KDF = KdfSettings(memory_kib=32 * 1024, iterations=2, lanes=1)
GUESSERS = 40
# The issue's own target for the archive's login while the attack runs (it measured 5.5 s);
# generous against a loaded 2-core machine, where the login itself takes about 0.1 s.
LOGIN_UNDER_ATTACK = 0.5


async def test_argon2id_lever_guesses_from_rotating_addresses_do_not_starve_the_archive(
    tmp_path: Path,
) -> None:
    """Without any valid credential, sessions on rotating source addresses kept Argon2id busy
    with guesses, and the archive's login queued behind all of them (0.10 s became 5.5 s)."""
    config = attack_config(tmp_path, max_failures=100_000)
    config = msgspec.structs.replace(
        config, store=msgspec.structs.replace(config.store, kdf=LEVER_KDF)
    )
    async with serve(tmp_path, config) as served:
        archive = served.gateway.archive
        assert archive is not None
        info, password = await archive.create_mailbox("journal")
        mailbox_id = info.mailbox_id
        assert (await login_once(served.port, served.context, mailbox_id, password)).startswith(
            "+OK"
        )
        guessing = 0
        answered = 0

        async def guess(source: str) -> None:
            nonlocal guessing, answered
            async with POP3Client.connect(served.port, served.context, source) as client:
                guessing += 1
                while True:
                    reply = await client.login(mailbox_id, "not the password")
                    assert reply.startswith("-ERR [AUTH]")
                    answered += 1

        times: list[float] = []
        async with trio.open_nursery() as attack:
            for n in range(GUESSERS):
                attack.start_soon(guess, f"127.0.5.{n + 2}")
            with trio.fail_after(30):
                while guessing < GUESSERS:  # noqa: ASYNC110 - polling the test's own counters
                    await trio.sleep(0.05)
            await trio.sleep(0.5)  # every guesser's PASS is in the queue by now
            before = answered
            for _ in range(3):
                started = trio.current_time()
                reply = await login_once(served.port, served.context, mailbox_id, password)
                times.append(trio.current_time() - started)
                assert reply.startswith("+OK"), reply
            still_queued = answered - before < GUESSERS
            attack.cancel_scope.cancel()
        assert max(times) < LOGIN_UNDER_ATTACK, times
        assert still_queued  # the attack was still going on while the archive logged in


# -- item 10: the proxy as a port scanner ---------------------------------------------------


async def test_pop3_proxy_as_a_port_scanner_gets_one_reply_and_is_throttled(
    tmp_path: Path,
) -> None:
    """Proxy logins to denied or unreachable targets were neither delayed nor throttled, and
    the reply told open ports from closed ones ("cannot connect", "not trusted", ...)."""
    config = attack_config(tmp_path)
    config = msgspec.structs.replace(config, proxy=ProxyConfig(allow=("127.0.0.0/8",)))
    async with serve(tmp_path, config) as served:
        archive = served.gateway.archive
        assert archive is not None
        info, _password = await archive.create_mailbox("copies")
        with trio.socket.socket() as probe:  # a port nobody listens on
            await probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        targets = [
            "10.1.2.3",  # denied by the policy
            f"[::127.0.0.1]:{served.ports['pop3s']}",  # IPv4-compatible loopback: denied
            f"127.0.0.1:{closed}",  # closed
            f"127.0.0.1:{served.ports['pop3s']}",  # open, TLS, a certificate nobody trusts
            f"127.0.0.1:{served.ports['smtp']}",  # open, no TLS
        ]
        async with POP3Client.connect(served.port, served.context, "127.0.6.2") as client:
            for n in range(2):
                for target in targets:
                    reply = await client.login(f"user{n}%{target}%{info.mailbox_id}", "pw")
                    assert reply == "-ERR [SYS/TEMP] proxy target unavailable", target
            # Ten failures from this address (make_config: pop3.max_failures 10).
            reply = await client.login(f"user%{targets[2]}%{info.mailbox_id}", "pw")
            assert reply == "-ERR [AUTH] too many failed logins, try again later"


async def test_session_flood_from_rotating_addresses_does_not_lock_the_archive_out(
    tmp_path: Path,
) -> None:
    """Idle connections from rotating addresses can fill POP3's session limit (the per-address
    limit does not stop them); a reserve of it is kept for clients that logged in from their
    address before, so the archive still gets in."""
    config = attack_config(tmp_path, max_sessions=5, max_sessions_per_client=5)
    async with serve(tmp_path, config) as served, AsyncExitStack() as idle:
        archive = served.gateway.archive
        assert archive is not None
        info, password = await archive.create_mailbox("journal")
        assert (
            await login_once(served.port, served.context, info.mailbox_id, password)
        ).startswith("+OK")
        with trio.fail_after(5):  # that session's slot is back once it has ended
            while served.gateway.pop3_limiter.active:  # noqa: ASYNC110
                await trio.sleep(0.01)
        for n in range(4):  # all but the reserve (a tenth of 5: one)
            await idle.enter_async_context(await raw_connect(served.port, f"127.0.12.{n + 2}"))
        async with await raw_connect(served.port, "127.0.12.9") as over:
            with trio.fail_after(5):
                assert await over.receive_some(100) == b""  # closed at once
        reply = await login_once(served.port, served.context, info.mailbox_id, password)
        assert reply.startswith("+OK maildrop"), reply


async def raw_connect(port: int, source: str) -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)
