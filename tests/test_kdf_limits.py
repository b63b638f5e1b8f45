"""Argon2id cost limits (issue 12, item 25): a floor for new wraps in production, enforced by
the configuration, and a ceiling enforced everywhere, key files and the credentials file
and the admin password's verifier included, before Argon2id runs (SPEC.md 5.1 and 10)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import msgspec
import pytest

from gateway import cli
from gateway.config import ConfigError, load_config
from gateway.crypto import (
    KdfParams,
    KeyFile,
    KeyFileCorrupt,
    create_mailbox_key,
    decode_key_file,
    unlock,
)
from gateway.services.accounts import Accounts
from gateway.services.archive import Archive, store_config

FAST = KdfParams(memory_kib=64, iterations=1, lanes=1)
MAILBOX = bytes.fromhex("c3" * 16)
PASSWORD = "correct horse battery staple"
GREEDY = [
    pytest.param(
        KdfParams(memory_kib=4 * 1024 * 1024, iterations=64, lanes=4), id="4GiB-64-passes"
    ),
    pytest.param(KdfParams(memory_kib=1024 * 1024 + 1, iterations=3, lanes=4), id="1GiB+1KiB"),
    pytest.param(KdfParams(memory_kib=65536, iterations=17, lanes=4), id="17-passes"),
    pytest.param(KdfParams(memory_kib=65536, iterations=3, lanes=64), id="64-lanes"),
]


@pytest.fixture(scope="module")
def key_file() -> KeyFile:
    return create_mailbox_key(MAILBOX, PASSWORD, FAST)


@pytest.fixture
def no_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any Argon2id derivation fails the test: the refusal must come before it."""

    def refuse(*args: object) -> bytes:
        raise AssertionError("Argon2id ran on parameters that should have been refused")

    monkeypatch.setattr("gateway.crypto._keys._argon2id", refuse)


@pytest.mark.parametrize("greedy", GREEDY)
@pytest.mark.usefixtures("no_argon2")
def test_tampered_key_file_cannot_make_argon2id_take_4_gib(
    key_file: KeyFile, greedy: KdfParams
) -> None:
    """A key file that asks for 4 GiB and 64 passes (its checksum is not keyed, so anyone who
    can write it can make it consistent) tied up memory and CPU at every unlock attempt."""
    key_file = msgspec.structs.replace(key_file, kdf=greedy)
    body = msgspec.msgpack.encode(key_file)
    data = b"MAGKEY1\n" + body + hashlib.sha256(body).digest()
    with pytest.raises(KeyFileCorrupt, match="out of range"):
        decode_key_file(data)
    with pytest.raises(KeyFileCorrupt, match="out of range"):
        unlock(key_file, MAILBOX, PASSWORD)


def _accounts(archive: Archive) -> Accounts:
    return Accounts(archive.data, FAST, archive.state.admin, archive.append_control)


@pytest.mark.parametrize("greedy", GREEDY)
async def test_tampered_credentials_file_cannot_make_argon2id_take_4_gib(
    archive: Archive, greedy: KdfParams, no_argon2: None
) -> None:
    """The same through an earlier version's ``<data>/admin/credentials``, which the first
    start migrates: refused at start, before any login."""
    raw = archive.data.admin_path
    stored = {
        "version": 1,
        "password": {"salt": bytes(16), "digest": bytes(32), "kdf": msgspec.to_builtins(greedy)},
        "tokens": [],
    }
    raw.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    raw.write_bytes(msgspec.msgpack.encode(stored))
    with pytest.raises(ValueError, match="tampered"):
        await _accounts(archive).load_or_create(None)
    assert archive.state.admin.created_at is None  # nothing migrated


@pytest.mark.parametrize("greedy", GREEDY)
async def test_tampered_password_verifier_cannot_make_argon2id_take_4_gib(
    archive: Archive, greedy: KdfParams
) -> None:
    """And through ``<data>/admin/password``, the verifier the control log names."""
    await _accounts(archive).load_or_create("a first admin password")
    path = archive.data.admin_password_path
    verifier = msgspec.msgpack.decode(path.read_bytes())
    verifier["password"]["kdf"] = msgspec.to_builtins(greedy)
    path.write_bytes(msgspec.msgpack.encode(verifier))
    with pytest.raises(ValueError, match="tampered"):
        await _accounts(archive).load_or_create(None)


def write_config(tmp_path: Path, kdf: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"[store.kdf]\n{kdf}\n")
    return path


@pytest.mark.parametrize(
    ("kdf", "message"),
    [
        ("memory_kib = 8\niterations = 1\nlanes = 1", "memory_kib"),  # RFC 9106's minimum
        ("memory_kib = 19455\niterations = 2\nlanes = 1", "memory_kib"),
        ("memory_kib = 65536\niterations = 1\nlanes = 4", "iterations"),
    ],
)
def test_configuration_refuses_argon2id_cheap_enough_to_brute_force(
    tmp_path: Path, kdf: str, message: str
) -> None:
    """8 KiB and one pass were accepted: mailbox passwords chosen by people (12 characters
    and up) could then be guessed offline from a stolen key file at a high rate."""
    with pytest.raises(ConfigError, match=rf"store\.kdf: Argon2 {message}") as refused:
        load_config(write_config(tmp_path, kdf))
    assert "gateway.toml" in str(refused.value)


@pytest.mark.parametrize(
    "kdf",
    [
        "memory_kib = 4194304\niterations = 3\nlanes = 4",
        "memory_kib = 65536\niterations = 64\nlanes = 4",
        "memory_kib = 65536\niterations = 3\nlanes = 17",
    ],
)
@pytest.mark.parametrize("insecure", [False, True])
def test_configuration_refuses_argon2id_above_the_ceiling(
    tmp_path: Path, kdf: str, insecure: bool
) -> None:
    escape = "\ninsecure_fast_for_tests = true" if insecure else ""
    with pytest.raises(ConfigError, match=r"store\.kdf: Argon2"):
        load_config(write_config(tmp_path, kdf + escape))


def test_floor_and_ceiling_are_inclusive(tmp_path: Path) -> None:
    low = load_config(write_config(tmp_path, "memory_kib = 19456\niterations = 2\nlanes = 1"))
    assert store_config(low).kdf == KdfParams(memory_kib=19456, iterations=2, lanes=1)
    high = "memory_kib = 1048576\niterations = 16\nlanes = 16"
    assert load_config(write_config(tmp_path, high)).store.kdf.lanes == 16


def test_the_test_only_escape_allows_fast_argon2id_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        tmp_path, "memory_kib = 64\niterations = 1\nlanes = 1\ninsecure_fast_for_tests = true"
    )
    assert store_config(load_config(path)).kdf == FAST
    served = []
    monkeypatch.setattr("gateway.cli.trio.run", lambda *args: served.append(args))
    with caplog.at_level(logging.WARNING, logger="gateway"):
        assert cli.main(["serve", "--config", str(path), "--data-dir", str(tmp_path)]) == 0
    assert served
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("event=insecure-kdf" in w and "insecure_fast_for_tests" in w for w in warnings)
