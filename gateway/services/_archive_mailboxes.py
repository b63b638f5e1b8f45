"""A mailbox's life: created with a fresh key pair, renamed or suspended, deleted.

Theory of operation
-------------------
Each step is a control event, durable before the archive's state changes (``MailboxCreated``,
``MailboxUpdated``, ``MailboxDeleted``). A new mailbox's folder, key file and empty log are
made (durable) before its ``MailboxCreated``: a crash in between leaves a folder the control
log never names, which nothing serves. A mailbox is deleted only once suspended, and only
empty unless purged; its folder goes after the event.
"""

from __future__ import annotations

from collections.abc import Mapping

import trio

from .._text import first_unsafe
from ..crypto import MailboxPublicKey, generate_password
from ..events import Actor, MailboxCreated, MailboxDeleted, MailboxStatus, MailboxUpdated, now
from ..ids import new_mailbox_id
from ._archive_core import ArchiveCore
from ._archive_keys import new_key
from ._common import InvalidValue, MailboxState, MailboxStateConflict, wrap_id
from .message_index import MessageIndex
from .projection import MailboxInfo

__all__ = ["create_mailbox", "delete_mailbox", "update_mailbox"]

MAX_NAME = 200
MAX_DESCRIPTION = 2000


async def create_mailbox(
    core: ArchiveCore, name: str, description: str, *, password: str | None, actor: Actor
) -> tuple[MailboxInfo, str]:
    name, description = (
        _check_text("name", name, MAX_NAME),
        _check_text("description", description, MAX_DESCRIPTION),
    )
    password = password if password is not None else generate_password()
    mailbox_id = new_mailbox_id()
    key, key_bytes = await new_key(core, mailbox_id, password)
    log = await trio.to_thread.run_sync(
        lambda: core.data.create_mailbox(
            mailbox_id,
            key_bytes,
            bytes.fromhex(mailbox_id),
            segment_bytes=core.config.segment_bytes,
        )
    )
    event = MailboxCreated(
        at=now(),
        actor=actor,
        mailbox_id=mailbox_id,
        name=name,
        description=description,
        key_id=key.key_id.hex(),
        wrap_id=wrap_id(key_bytes),
        witnessed=True,
    )
    await core.append_control(event)
    info = core.state.mailboxes[mailbox_id]
    box = core.boxes[mailbox_id] = MailboxState(
        info=info, index=MessageIndex(), public_key=MailboxPublicKey.from_key_file(key)
    )
    core.attach_log(box, log)
    box.opened.set()
    core.state.forget_messages(mailbox_id)  # its index keeps its witnesses
    core.notify(mailbox_id)
    return info, password


async def update_mailbox(
    core: ArchiveCore,
    mailbox_id: str,
    *,
    name: str | None,
    description: str | None,
    status: MailboxStatus | None,
    alarms: Mapping[str, float | None] | None = None,
    actor: Actor,
) -> MailboxInfo:
    info = core.box(mailbox_id).info
    thresholds: dict[str, float | None] = {
        "max_waiting_age": info.max_waiting_age,
        "max_waiting_bytes": info.max_waiting_bytes,
        "expect_mail_every": info.expect_mail_every,
    }
    for key, value in (alarms or {}).items():
        if key not in thresholds:
            raise InvalidValue(f"no alarm threshold {key}")
        if value is not None and not 0 <= value < 1e15:
            raise InvalidValue(f"{key} must be 0 (off) or more, or null (the configuration's)")
        thresholds[key] = value
    size = thresholds["max_waiting_bytes"]
    event = MailboxUpdated(
        at=now(),
        actor=actor,
        mailbox_id=info.mailbox_id,
        name=info.name if name is None else _check_text("name", name, MAX_NAME),
        description=info.description
        if description is None
        else _check_text("description", description, MAX_DESCRIPTION),
        status=info.status if status is None else MailboxStatus(status),
        max_waiting_age=thresholds["max_waiting_age"],
        max_waiting_bytes=None if size is None else int(size),
        expect_mail_every=thresholds["expect_mail_every"],
    )
    await core.append_control(event)
    return info


async def delete_mailbox(core: ArchiveCore, mailbox_id: str, *, purge: bool, actor: Actor) -> int:
    box = await core.opened(mailbox_id)
    async with box.lock:
        info = box.info
        if info.status != MailboxStatus.SUSPENDED:
            raise MailboxStateConflict("a mailbox must be suspended before it can be deleted")
        remaining = len(box.index)
        if remaining and not purge:
            raise MailboxStateConflict(
                f"mailbox still holds {remaining} messages; delete with purge to discard them"
            )
        await core.append_control(
            MailboxDeleted(
                at=now(),
                actor=actor,
                mailbox_id=info.mailbox_id,
                purged_messages=remaining,
            )
        )
        del core.boxes[info.mailbox_id]
        core.notify(info.mailbox_id)  # gone now
        if box.writer is not None:
            box.writer.log.close()
        await trio.to_thread.run_sync(core.data.remove_mailbox, info.mailbox_id)
    return remaining


def _check_text(what: str, value: str, limit: int) -> str:
    """A mailbox name or description (SPEC.md 10): no controls (C0, DEL, C1), no line or
    paragraph separators, no bidirectional formatting controls, which would let it forge
    lines and cells wherever it is shown; a description may hold tabs and newlines."""
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidValue(f"{what} must be text of at most {limit} characters")
    bad = first_unsafe(value, allowed="\t\n" if what == "description" else "")
    if bad is not None:
        raise InvalidValue(
            f"{what} must not contain control, line-separator or bidirectional formatting "
            f"characters (U+{ord(bad):04X})"
        )
    return value
