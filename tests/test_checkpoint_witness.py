"""`gateway witness` (SPEC.md 8.3) against a serving gateway: it accepts each new signed
checkpoint whose consistency proof it verifies, and exits 1 the moment the gateway's history
does not extend the one it accepted (here: its memory holds a checkpoint of a history the
gateway never had, signed with the gateway's own key)."""

from __future__ import annotations

import base64
import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gateway.events import (
    CheckpointSigned,
    MessageStored,
    decode_control_event,
    decode_message_event,
    now,
)
from gateway.log import RecordKind
from gateway.merkle import leaf_hash, verify_inclusion
from gateway.protocols import admin as api
from gateway.protocols.admin import ApiError
from gateway.services.tree_heads import load_signer
from gateway.tlog import Checkpoint, Verifier, open_note

from .gateway_helpers import Running, running  # noqa: F401 - the fixture
from .test_admin_api import admin

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


async def test_the_admin_api_signs_on_demand_and_proves_inclusion(
    running: Running,  # noqa: F811
) -> None:
    archive = running.archive
    info, _ = await archive.create_mailbox("proved")
    await trio.to_thread.run_sync(send, running.port("smtp"), info.mailbox_id)
    (message,) = archive.messages(info.mailbox_id)
    async with admin(running) as client:
        signed = await client.request(api.CheckpointSign())
        assert isinstance(signed, api.CheckpointReply) and signed.note
        proof = await client.request(api.ProofInclusion(message_id=message.message_id))
        assert isinstance(proof, api.InclusionProofReply)
        assert proof.mailbox_id == info.mailbox_id
        verifier = Verifier.parse(running.gateway.checkpoint_vkey)
        # Against the mailbox log's checkpoint, signed with the control log's, which
        # records it: the control log's checkpoint covers the mailbox's.
        checkpoint = Checkpoint.parse(open_note(proof.checkpoint.encode(), verifier))
        assert checkpoint.origin.endswith(f"/gateway/mailbox/{info.mailbox_id}")
        control = Checkpoint.parse(open_note(signed.note.encode(), verifier))
        records = await trio.to_thread.run_sync(lambda: list(archive.read_control()))
        assert any(
            isinstance(event := decode_control_event(r.body), CheckpointSigned)
            and event.note == proof.checkpoint
            and r.seq < control.size
            for r in records
            if r.kind == RecordKind.EVENT
        )
        hashes = [base64.b64decode(h) for h in proof.hashes]
        leaf = base64.b64decode(proof.leaf)
        assert verify_inclusion(
            leaf_hash(leaf), proof.index, checkpoint.size, hashes, checkpoint.root
        )
        assert proof.index == message.seq
        assert isinstance(decode_message_event(leaf[9:]), MessageStored)  # its commit record
        assert message.message_id.encode() in leaf
        with pytest.raises(ApiError, match="no mailbox serves"):
            await client.request(api.ProofInclusion(message_id="00" * 16))


async def test_a_following_witness_checks_every_tree_as_it_is_signed(
    running: Running,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Without --once the witness follows the audit feed: every mailbox log's checkpoint
    and the control log's are accepted as they are signed, each extending the last; a
    second head for a mailbox log's accepted size ends it at once, exit 1."""
    gateway, archive = running.gateway, running.archive
    assert gateway.checkpoints is not None
    info, _ = await archive.create_mailbox("followed")
    box = info.mailbox_id
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environment["GATEWAY_ADMIN_PASSWORD"] = running.admin_password
    argv = [sys.executable, "-m", "gateway", "witness", "--url", running.admin_url]
    argv += ["--data-dir", str(running.cafile.parent.parent), "--state", str(tmp_path / "w")]
    argv += ["--vkey", gateway.checkpoint_vkey, "--interval", "600"]
    process = await trio.lowlevel.open_process(
        argv, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    seen = b""

    async def until(text: bytes) -> None:
        nonlocal seen
        with trio.fail_after(30):
            while text not in seen:
                chunk = await process.stdout.receive_some()  # type: ignore[union-attr]
                assert chunk, seen
                seen += chunk

    try:
        with trio.fail_after(30):
            said = b""
            while b"following the audit feed" not in said:
                chunk = await process.stderr.receive_some()
                assert chunk, said
                said += chunk
        for round_ in range(2):
            await trio.to_thread.run_sync(send, running.port("smtp"), box)
            await gateway.checkpoints.sign()
            mailbox = Checkpoint.parse(
                (tmp := archive.data.read_mailbox_checkpoint(box) or b"")[: tmp.index(b"\n\n") + 1]
            )
            await until(f"accepted {mailbox.origin} size {mailbox.size}\n".encode())
            control = archive.data.read_checkpoint() or b""
            size = int(control.split(b"\n")[1])
            await until(f"/gateway/control size {size}\n".encode())
            assert round_ == 0 or b"size" in seen
        # Another head for the same records of the mailbox log, signed with the key.
        signer, _made = load_signer(archive, gateway.checkpoints.signer.name)
        forged = signer.sign(Checkpoint(mailbox.origin, mailbox.size, bytes(32)).body())
        await archive.append_control(
            CheckpointSigned(
                at=now(),
                origin=mailbox.origin,
                size=mailbox.size,
                root=bytes(32),
                note=forged.decode(),
                mailbox_id=box,
            )
        )
        with trio.fail_after(30):
            code = await process.wait()
        err = await process.stderr.receive_some()
        assert code == 1, (seen, err)
        assert b"FORKED HISTORY" in err and b"two heads" in err
    finally:
        process.kill()
        await process.wait()
