"""`gateway witness` (SPEC.md 8.3) against a serving gateway: it accepts each new signed
checkpoint whose consistency proof it verifies, and exits 1 the moment the gateway's history
does not extend the one it accepted (here: its memory holds a checkpoint of a history the
gateway never had, signed with the gateway's own key)."""

from __future__ import annotations

import json
import os
import smtplib
import sys
from pathlib import Path

import trio

from gateway.services.tree_heads import load_signer
from gateway.tlog import Checkpoint

from .gateway_helpers import Running, running  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent


async def witness(served: Running, state: Path, *extra: str) -> tuple[int, str, str]:
    """``gateway witness --once`` against the running gateway (trusting its data folder's
    certificate, logged in with the admin password)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environment["GATEWAY_ADMIN_PASSWORD"] = served.admin_password
    result = await trio.run_process(
        [
            sys.executable,
            "-m",
            "gateway",
            "witness",
            "--url",
            served.admin_url,
            "--data-dir",
            str(served.cafile.parent.parent),
            "--state",
            str(state),
            "--once",
            *extra,
        ],
        cwd=ROOT,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environment,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def send(port: int, mailbox_id: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.sendmail("a@example.com", [f"mbx-{mailbox_id}@localhost"], b"Subject: x\r\n\r\nx\r\n")


async def test_a_witness_accepts_extensions_and_catches_a_fork(
    running: Running,  # noqa: F811
    tmp_path: Path,
) -> None:
    gateway, archive = running.gateway, running.archive
    assert gateway.checkpoints is not None
    info, _ = await archive.create_mailbox("watched")
    await trio.to_thread.run_sync(send, running.port("smtp"), info.mailbox_id)
    await gateway.checkpoints.sign()
    state = tmp_path / "witness.json"
    code, out, err = await witness(running, state, "--vkey", gateway.checkpoint_vkey)
    assert code == 0 and "accepted" in out, err

    await trio.to_thread.run_sync(send, running.port("smtp"), info.mailbox_id)
    await gateway.checkpoints.sign()
    code, out, err = await witness(running, state)
    assert code == 0 and "accepted" in out, err
    note = json.loads(state.read_text())["checkpoint"].encode()
    accepted = Checkpoint.parse(note[: note.index(b"\n\n") + 1])

    # A checkpoint of another history of the same size, signed with the gateway's key (its
    # key stolen, or its log rewritten): the next look must refuse to go on from it.
    signer, _made = load_signer(archive, accepted.origin)
    forged = signer.sign(Checkpoint(accepted.origin, accepted.size - 1, bytes(32)).body())
    state.write_text(json.dumps({"vkey": gateway.checkpoint_vkey, "checkpoint": forged.decode()}))
    await trio.to_thread.run_sync(send, running.port("smtp"), info.mailbox_id)
    await gateway.checkpoints.sign()
    code, out, err = await witness(running, state)
    assert code == 1, (out, err)
    assert "FORKED HISTORY" in err and "rewritten history" in err
