"""The POP3 proxy's source keys (SPEC.md 5.5, 15.3): keyed under a gateway secret kept
outside the data folder, so a copy of the data folder cannot confirm a guessed (target,
remote user, UIDL); the secret is made once, 0600, and a gateway refuses to start on a bad
one. The proxy end to end (Dovecot upstream) is in the slow test at the bottom."""

from __future__ import annotations

import hashlib
import poplib
import ssl
import stat
from pathlib import Path

import msgspec
import pytest
import trio

from gateway.config import ConfigError, ProxyConfig, default_source_key_path, load_config
from gateway.events import Envelope, MessageStored, decode_message_event, now
from gateway.log import RecordKind, iter_log
from gateway.servers.gateway import Gateway, Listening, StartupError
from gateway.services.source_keys import (
    SECRET_BYTES,
    SourceKeyError,
    SourceKeys,
    legacy_source_key,
    load_source_keys,
)

from .gateway_helpers import make_config
from .peers import open_private_dovecot
from .peers.dovecot import DovecotInstance

MESSAGES = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond\r\n"]


def test_the_secret_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "data-secret" / "source-key"
    keys = load_source_keys(path)
    assert len(keys.secret) == SECRET_BYTES
    assert path.read_bytes() == keys.secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["source-key"]  # no temporary left
    assert load_source_keys(path) == keys  # read, not made again
    assert keys.secret.hex() not in repr(keys)


def test_a_damaged_or_unreadable_secret_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    with pytest.raises(SourceKeyError, match="31 bytes, not 32"):
        load_source_keys(short)
    with pytest.raises(SourceKeyError, match="outside the data folder"):
        load_source_keys(short / "not-a-folder" / "source-key")


def test_keys_need_the_secret_and_differ_per_mailbox() -> None:
    one, two = SourceKeys(b"\x01" * 32), SourceKeys(b"\x02" * 32)
    triple = ("mail.example.org:995", "alice", "UID123")
    unkeyed = hashlib.sha256("\0".join(triple).encode()).hexdigest()
    assert legacy_source_key(*triple) == unkeyed
    assert one.key("a" * 32, *triple) not in (unkeyed, two.key("a" * 32, *triple))
    assert one.key("a" * 32, *triple) != one.key("b" * 32, *triple)
    assert one.key("a" * 32, *triple) == SourceKeys(b"\x01" * 32).key("a" * 32, *triple)


def test_the_default_secret_lives_beside_the_data_folder(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    assert config.source_key_path() == tmp_path / "data-secret" / "source-key"
    assert default_source_key_path("/var/lib/gateway") == Path("/var/lib/gateway-secret/source-key")
    inside = tmp_path / "inside.toml"
    inside.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[proxy]\nsource_key_secret_file = "{tmp_path / "data" / "key"}"\n'
    )
    with pytest.raises(ConfigError, match="outside the data folder"):
        load_config(inside)


async def test_the_gateway_makes_the_secret_and_refuses_a_bad_one(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    async with trio.open_nursery() as nursery:
        gateway = Gateway(config, environ={})
        await nursery.start(gateway.run)
        secret = tmp_path / "data-secret" / "source-key"
        assert gateway.source_keys == SourceKeys(secret.read_bytes())
        gateway.request_shutdown()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"too short")
    proxy = msgspec.structs.replace(config.proxy, source_key_secret_file=str(elsewhere))
    broken = Gateway(msgspec.structs.replace(config, proxy=proxy), environ={})
    with pytest.raises(StartupError, match="9 bytes, not 32"):
        await broken.run()


def upstream_uidls(dovecot: DovecotInstance) -> list[str]:
    context = ssl.create_default_context(cafile=str(dovecot.ca_file))
    client = poplib.POP3_SSL(dovecot.host, dovecot.pop3s_port, context=context)
    client.user("alice")
    client.pass_("upstream")
    _resp, listing, _ = client.uidl()
    client.quit()
    return [line.split()[1].decode() for line in listing]


def stored_source_keys(data: Path, mailbox_id: str) -> list[str]:
    records = iter_log(data / "mailboxes" / mailbox_id / "log", bytes.fromhex(mailbox_id))
    return [
        event.source_key
        for record in records
        if record.kind == RecordKind.EVENT
        and isinstance(event := decode_message_event(record.body), MessageStored)
    ]


@pytest.mark.slow
async def test_a_copy_of_the_data_folder_cannot_confirm_a_guessed_source(
    tmp_path: Path,
) -> None:
    """RETR through the proxy against a private Dovecot: the stored source key is the keyed
    one (the unkeyed SHA-256 of the guessable triple appears nowhere in the data folder); a
    copy stored under the unkeyed key (before the secret existed) is still recognised; with
    the secret lost, the next RETR stores one more copy and nothing is lost."""
    async with open_private_dovecot(tmp_path / "dovecot", users={"alice": "upstream"}) as dovecot:
        for message in MESSAGES:
            dovecot.deliver("alice", message)
        config = make_config(tmp_path / "data")
        settings = {"allow": ("127.0.0.0/8",), "ca_files": (str(dovecot.ca_file),)}
        config = msgspec.structs.replace(config, proxy=msgspec.convert(settings, ProxyConfig))
        target = f"{dovecot.host}:{dovecot.pop3s_port}"

        async def retrieve_all(gateway: Gateway, mailbox_id: str) -> list[str]:
            """One proxy session: UIDL, then RETR of each message; the UIDLs."""
            cafile = str(tmp_path / "data" / "tls" / "cert.pem")

            def session() -> list[str]:
                context = ssl.create_default_context(cafile=cafile)
                port = next(x.port for x in gateway.listening if x.name == "pop3s")
                client = poplib.POP3_SSL("localhost", port, context=context)
                client.user(f"alice%{target}%{mailbox_id}")
                client.pass_("upstream")
                _resp, listing, _ = client.uidl()
                for n in range(1, len(listing) + 1):
                    client.retr(n)
                client.quit()
                return [line.split()[1].decode() for line in listing]

            return await trio.to_thread.run_sync(session)

        async with trio.open_nursery() as nursery:
            gateway = Gateway(config, environ={})
            listening: list[Listening] = await nursery.start(gateway.run)
            assert listening and gateway.archive is not None
            archive = gateway.archive
            info, _password = await archive.create_mailbox("proxy copies")
            mailbox_id = info.mailbox_id
            # A copy stored by an older gateway, under the unkeyed key of message 2.
            upstream = await trio.to_thread.run_sync(upstream_uidls, dovecot)
            writer = archive.begin_message(
                [mailbox_id], legacy_source_key(target, "alice", upstream[1])
            )
            await writer.write(MESSAGES[1])
            await writer.commit(Envelope(received_at=now(), origin="pop3-proxy"))

            uidls = await retrieve_all(gateway, mailbox_id)
            assert uidls == upstream
            assert len(archive.messages(mailbox_id)) == 2  # message 1 stored, 2 recognised
            await retrieve_all(gateway, mailbox_id)
            assert len(archive.messages(mailbox_id)) == 2  # nothing stored again
            gateway.request_shutdown()

        keys = SourceKeys((tmp_path / "data-secret" / "source-key").read_bytes())
        assert stored_source_keys(tmp_path / "data", mailbox_id) == [
            legacy_source_key(target, "alice", uidls[1]),
            keys.key(mailbox_id, target, "alice", uidls[0]),
        ]
        guess = legacy_source_key(target, "alice", uidls[0]).encode()
        for path in (tmp_path / "data").rglob("*"):
            if path.is_file():
                assert guess not in path.read_bytes(), path

        # The secret lost: a new one is made, and message 1 is stored once more.
        (tmp_path / "data-secret" / "source-key").unlink()
        async with trio.open_nursery() as nursery:
            gateway = Gateway(config, environ={})
            await nursery.start(gateway.run)
            assert gateway.archive is not None and gateway.source_keys != keys
            await retrieve_all(gateway, mailbox_id)
            assert len(gateway.archive.messages(mailbox_id)) == 3
            gateway.request_shutdown()
