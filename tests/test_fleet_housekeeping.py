"""The fleet's periodic passes run on one node at a time (SPEC.md 17.5), on a real
PostgreSQL: the first node to ask holds the housekeeping lock while its connection lives; when
it is gone, the next node to ask takes it; a node that lost its connection meanwhile finds the
lock taken and stops. A node without it signs no checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from gateway.events import CheckpointSigned, decode_control_event
from gateway.fleet import FleetDataDir
from gateway.services.archive import Archive
from gateway.services.tree_heads import CheckpointSigner, control_origin

from .peers import PostgresServer
from .test_fleet_archive import store
from .test_fleet_nodes import mailbox_on_both, node

pytestmark = pytest.mark.slow


def test_one_node_at_a_time_does_the_housekeeping(
    postgres: PostgresServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = (
        FleetDataDir(tmp_path / n, postgres.dsn, application_name=f"node-{n}", node=n)
        for n in ("a", "b")
    )
    try:
        assert a.housekeeping()
        assert a.housekeeping()  # kept
        assert not b.housekeeping()
        assert postgres.terminate_backends("node-a") >= 1
        assert b.housekeeping()  # a's lock went with its connection
        assert not a.housekeeping()  # a, connected again, finds it taken
        assert "event=fleet-housekeeping-moved" in caplog.text
        b.unlock()  # b stops: its connections close, and its server process ends soon after
        deadline = time.monotonic() + 5
        while not a.housekeeping():
            assert time.monotonic() < deadline, "b's lock outlived b"
            time.sleep(0.05)
    finally:
        a.unlock()
        b.unlock()


async def test_a_node_without_the_housekeeping_signs_no_checkpoints(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    async with node(postgres, tmp_path / "b") as b:
        signer = await CheckpointSigner.open(b, control_origin("b.test"))
        async with node(postgres, tmp_path / "a") as a:
            assert await a.housekeeping()
            box, _password = await mailbox_on_both(a, b, "signed")
            await store(a, box, 5)
            with trio.move_on_after(0.5):
                await signer.run(0.05)
            assert await signed(b) == []
        # a stopped: b takes the housekeeping over, and signs what moved.
        with trio.move_on_after(0.5):
            await signer.run(0.05)
        made = await signed(b)
        assert {e.mailbox_id for e in made} == {"", box}
        assert await b.housekeeping()


async def signed(archive: Archive) -> list[CheckpointSigned]:
    """The CheckpointSigned records of the control log."""
    await archive.catch_up()
    records = await trio.to_thread.run_sync(lambda: list(archive.data.records(None)))
    events = (decode_control_event(r.body) for r in records)
    return [e for e in events if isinstance(e, CheckpointSigned)]
