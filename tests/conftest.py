from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from gateway.crypto import KdfParams
from gateway.services.archive import Archive, StoreConfig

# The property tests check what the machines do, not how fast: on a loaded CI machine one
# example may take longer than hypothesis's default deadline of 200 ms, which it reports as a
# failure.
settings.register_profile("gateway", deadline=None)
settings.load_profile("gateway")

# Argon2id at full strength costs ~0.1 s a call; tests use the smallest legal parameters
# except where the defaults themselves are under test.
FAST_KDF = KdfParams(memory_kib=64, iterations=1, lanes=1)


@pytest.fixture
def store_config() -> StoreConfig:
    return StoreConfig(kdf=FAST_KDF, segment_bytes=256 * 1024)


@pytest.fixture
async def archive(tmp_path: Path, store_config: StoreConfig) -> AsyncIterator[Archive]:
    archive = await Archive.open(tmp_path / "data", store_config)
    try:
        yield archive
    finally:
        await archive.aclose()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


# A gateway serving in the test's nursery (tests/gateway_helpers.py).
from .gateway_helpers import running  # noqa: E402, F401
from .peers import PostgresServer, private_postgres  # noqa: E402


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A private PostgreSQL of the test's own (tests/peers): an empty fleet store."""
    with private_postgres(tmp_path / "pg") as server:
        yield server


@pytest.fixture(scope="module")
def shared_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One private PostgreSQL for a module's tests, the fleet store's schema made."""
    import psycopg  # noqa: PLC0415 (only the fleet tests need it)

    from gateway.fleet import ensure_schema  # noqa: PLC0415

    with private_postgres(tmp_path_factory.mktemp("pg")) as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            ensure_schema(conn)
        yield server
