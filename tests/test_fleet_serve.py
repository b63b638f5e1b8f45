"""`gateway serve` with `[store] backend = "postgresql"` (SPEC.md 17.6) on a real PostgreSQL,
one node with two protocol workers: mail taken over SMTP by either worker is retrieved over
POP3 byte for byte (the workers read the rows), the node's folder holds no log and no key,
a restart serves the same mail, and the store copied out verifies as a data folder."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
import trio

from gateway.fleet import FleetDataDir, copy_out
from gateway.log import DataDir
from gateway.services.archive import Archive, StoreConfig
from gateway.verify import verify_data_dir

from .conftest import FAST_KDF
from .gateway_helpers import strip_received
from .peers import PostgresServer
from .test_workers import CONFIG, retrieve, send_all, serve

pytestmark = pytest.mark.slow


async def create_mailbox(node: Path, dsn: str) -> tuple[str, str]:
    data = await trio.to_thread.run_sync(FleetDataDir, node, dsn)
    archive = await Archive.open(data, StoreConfig(kdf=FAST_KDF))
    try:
        info, password = await archive.create_mailbox("fleet")
        return info.mailbox_id, password
    finally:
        await archive.aclose()


def test_a_node_serves_from_the_fleet_store(postgres: PostgresServer, tmp_path: Path) -> None:
    store = f'[store]\nbackend = "postgresql"\ndsn = {json.dumps(postgres.dsn)}\n'
    config = CONFIG.replace("[store]\n", store)
    mailbox_id, password = trio.run(create_mailbox, tmp_path / "data", postgres.dsn)
    sent = [b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in range(30)]
    with serve(tmp_path, workers=2, config_text=config) as served:
        send_all(served.ports["smtp"], mailbox_id, sent)
        stored = retrieve(served.ports["pop3"], mailbox_id, password)
        assert sorted(strip_received(b) for b in stored) == sorted(sent)
    assert served.process.returncode == 0
    node = tmp_path / "data"
    assert not (node / "control").exists() and not list(node.glob("mailboxes/*/key"))

    with serve(tmp_path, workers=1, config_text=config) as served:  # a restart
        again = retrieve(served.ports["pop3"], mailbox_id, password, delete=True)
        assert sorted(again) == sorted(stored)
    assert served.process.returncode == 0

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        copy_out(conn, DataDir(tmp_path / "copy"), lambda where, count: None)
    report = verify_data_dir(tmp_path / "copy")
    assert report.ok, [str(p) for p in report.problems]
    assert report.messages == 0  # every one retrieved and deleted, durably
