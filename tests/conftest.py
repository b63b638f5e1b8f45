from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.crypto import KdfParams
from gateway.services.archive import Archive, StoreConfig

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
