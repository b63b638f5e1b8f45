"""A mailbox's key file: made, checked against the control log, re-wrapped, reset, unlocked.

Theory of operation
-------------------
Key changes are two-phase (SPEC.md 6.5): the new key file is staged beside the old one
(durable), the control event is appended, then the staged file is renamed over the old one.
A crash in between is resolved on open by the control log (:func:`settle_staged_key`): the
staged file is taken if its wrap id is the one the log names, dropped otherwise.

A key file is only ever used if it is the one the control log names (key id and wrap id): a
swapped file would seal new mail to someone else's key, or open with someone else's password.
A reset waits for the witnesses in flight and refuses new ones while it runs, so no message
sealed to the retired key is committed after it.
"""

from __future__ import annotations

import trio

from ..crypto import (
    KeyFile,
    MailboxPrivateKey,
    MailboxPublicKey,
    create_mailbox_key,
    decode_key_file,
    encode_key_file,
    generate_password,
    rewrap,
)
from ..crypto import unlock as unlock_key
from ..events import Actor, ControlEvent, MailboxKeyReset, MailboxKeyRewrapped, now
from ..log import DataDir
from ._archive_core import ArchiveCore
from ._common import ArchiveError, MailboxState, wrap_id
from .projection import MailboxInfo

__all__ = [
    "change_password",
    "checked_public_key",
    "key_file",
    "new_key",
    "reset_password",
    "settle_staged_key",
    "unlock",
]


async def new_key(core: ArchiveCore, mailbox_id: str, password: str) -> tuple[KeyFile, bytes]:
    """A fresh key pair for the mailbox under ``password`` (Argon2id in a worker thread):
    the key and its key file's bytes."""
    key = await trio.to_thread.run_sync(
        create_mailbox_key, bytes.fromhex(mailbox_id), password, core.config.kdf
    )
    return key, encode_key_file(key)


def settle_staged_key(data: DataDir, info: MailboxInfo) -> None:
    """On open (blocking): finish or undo a key change cut short, as the control log says."""
    staged = data.staged_key_file(info.mailbox_id)
    if staged is None:
        return
    if wrap_id(staged) == info.wrap_id:
        data.commit_key_file(info.mailbox_id)
    else:
        data.discard_staged_key_file(info.mailbox_id)


def checked_public_key(data: DataDir, info: MailboxInfo) -> MailboxPublicKey:
    """The mailbox's public key (blocking), from a key file that must be the one the control
    log names: a swapped file would seal new mail to someone else's key."""
    key_bytes = data.read_key_file(info.mailbox_id)
    key = decode_key_file(key_bytes)
    if key.key_id.hex() != info.key_id or wrap_id(key_bytes) != info.wrap_id:
        raise ArchiveError("key file is not the one the control log names")
    return MailboxPublicKey.from_key_file(key)


async def key_file(core: ArchiveCore, mailbox_id: str) -> bytes:
    box = core.box(mailbox_id)
    await _read_key(core, box)
    return await trio.to_thread.run_sync(core.data.read_key_file, box.info.mailbox_id)


async def unlock(
    core: ArchiveCore,
    mailbox_id: str,
    password: str,
    *,
    limiter: trio.CapacityLimiter | None = None,
) -> MailboxPrivateKey:
    box = core.box(mailbox_id)
    key = await _read_key(core, box)
    return await trio.to_thread.run_sync(
        unlock_key, key, bytes.fromhex(box.info.mailbox_id), password, limiter=limiter
    )


async def change_password(
    core: ArchiveCore,
    mailbox_id: str,
    old_password: str,
    new_password: str | None,
    *,
    actor: Actor,
) -> str:
    box = core.box(mailbox_id)
    new_password = new_password if new_password is not None else generate_password()
    async with box.lock:
        key = await _read_key(core, box)
        new_key_file = await trio.to_thread.run_sync(
            lambda: rewrap(
                key,
                bytes.fromhex(box.info.mailbox_id),
                old_password,
                new_password,
                core.config.kdf,
            )
        )
        key_bytes = encode_key_file(new_key_file)
        await _replace_key(
            core,
            box,
            key_bytes,
            MailboxKeyRewrapped(
                at=now(),
                actor=actor,
                mailbox_id=box.info.mailbox_id,
                key_id=new_key_file.key_id.hex(),
                wrap_id=wrap_id(key_bytes),
            ),
        )
    return new_password


async def reset_password(
    core: ArchiveCore, mailbox_id: str, new_password: str | None, *, actor: Actor
) -> tuple[str, int]:
    box = await core.opened(mailbox_id)  # its messages are counted
    new_password = new_password if new_password is not None else generate_password()
    async with box.lock:
        key, key_bytes = await new_key(core, box.info.mailbox_id, new_password)
        new_key_id = key.key_id.hex()
        # Messages sealed to the old key that are past their witness are counted below;
        # those not yet there are refused at it (SPEC.md 6.5).
        box.resetting = True
        try:
            while box.witnessing:
                await box.witnesses_idle.wait()
            lost = [m for m in box.index if m.key_id != new_key_id]
            await _replace_key(
                core,
                box,
                key_bytes,
                MailboxKeyReset(
                    at=now(),
                    actor=actor,
                    mailbox_id=box.info.mailbox_id,
                    old_key_id=box.info.key_id,
                    key_id=new_key_id,
                    wrap_id=wrap_id(key_bytes),
                    unreadable_messages=len(lost),
                    unreadable_bytes=sum(m.size for m in lost),
                ),
            )
            box.public_key = MailboxPublicKey.from_key_file(key)
        finally:
            box.resetting = False
        core.notify(box.info.mailbox_id)
    return new_password, len(lost)


async def _read_key(core: ArchiveCore, box: MailboxState) -> KeyFile:
    if box.damaged is not None:
        raise core.unavailable(box)
    key_bytes = await trio.to_thread.run_sync(core.data.read_key_file, box.info.mailbox_id)
    key = decode_key_file(key_bytes)
    if wrap_id(key_bytes) != box.info.wrap_id:
        core.mark_damaged(box, "key file is not the one the control log names")
        raise core.unavailable(box)
    return key


async def _replace_key(
    core: ArchiveCore, box: MailboxState, key_bytes: bytes, event: ControlEvent
) -> None:
    """Stage the new key file, append the event, then put the file in place (SPEC.md 6.5)."""
    data, mailbox_id = core.data, box.info.mailbox_id
    await trio.to_thread.run_sync(data.stage_key_file, mailbox_id, key_bytes)
    try:
        await core.append_control(event)
    except BaseException:
        await trio.to_thread.run_sync(data.discard_staged_key_file, mailbox_id)
        raise
    await trio.to_thread.run_sync(data.commit_key_file, mailbox_id)
