"""Backlog alarms and the free-space floor (SPEC.md 13.8).

Theory of operation
-------------------
The failure that loses journal mail in practice is an archive that silently stopped fetching
while the gateway filled up; the other is a journal rule that stopped sending. :class:`Alarms`
looks at every mailbox every ``check_interval`` seconds: the age of its oldest waiting
message, the octets waiting, and the time since mail last arrived (or since it was created),
each against the mailbox's own threshold or the configuration's. A crossing is recorded in
the control log once (``MailboxAlarmRaised``), and its end once (``MailboxAlarmCleared``), so
the projection knows which alarms are up (status, console, metrics) and the audit feed tells
whoever follows it.

The data folder's file system is looked at every few seconds: under ``min_free_bytes``,
``StoreSpaceLow`` is recorded and intake refuses with 452 4.3.1 (``Archive.begin_pending``)
until ``StoreSpaceRestored``, so mail never runs the disk full and what is stored stays
readable and verifiable.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime

import trio

from ..config import AlarmSettings
from ..events import (
    MailboxAlarmCleared,
    MailboxAlarmRaised,
    StoreSpaceLow,
    StoreSpaceRestored,
    now,
)
from ..log import LogCorrupt, LogWriteError
from .archive import Archive, ArchiveError
from .projection import MailboxInfo

__all__ = ["SPACE_INTERVAL", "Alarms", "thresholds"]

logger = logging.getLogger("gateway")

SPACE_INTERVAL = 5.0  # seconds between two looks at the free space


@dataclass(frozen=True, slots=True)
class Thresholds:
    age: float  # seconds; 0: off
    size: int  # octets; 0: off
    quiet: float  # seconds; 0: off


def thresholds(info: MailboxInfo, defaults: AlarmSettings) -> Thresholds:
    """A mailbox's thresholds: its own where it set them, else the configuration's."""

    def pick(own: float | None, default: float) -> float:
        return default if own is None else own

    return Thresholds(
        age=pick(info.max_waiting_age, defaults.max_waiting_age),
        size=int(pick(info.max_waiting_bytes, defaults.max_waiting_bytes)),
        quiet=pick(info.expect_mail_every, defaults.expect_mail_every),
    )


class Alarms:
    def __init__(self, archive: Archive, settings: AlarmSettings, min_free_bytes: int) -> None:
        self.archive = archive
        self.settings = settings
        self.min_free_bytes = min_free_bytes

    async def run(self) -> None:
        """Look at the free space every SPACE_INTERVAL seconds and at every mailbox every
        ``check_interval`` (once every mailbox log is open)."""
        await self.archive.all_opened()
        next_mailboxes = trio.current_time()
        while True:
            try:
                await self.check_space()
                if trio.current_time() >= next_mailboxes:
                    if await self.archive.housekeeping():  # one node of a fleet looks
                        await self.check_mailboxes()
                    next_mailboxes = trio.current_time() + self.settings.check_interval
            except LogWriteError as exc:  # the control log cannot take the record: next time
                logger.warning("event=alarm-check-failed reason=%r", str(exc))
            await trio.sleep(min(SPACE_INTERVAL, self.settings.check_interval))

    async def check_space(self) -> None:
        archive = self.archive
        if archive.shared:
            # The fleet store's disk is the database server's to watch: a full one refuses
            # writes (4xx, SPEC.md 17.7). This node's folder holds no mail to guard.
            return
        try:
            free = (await trio.to_thread.run_sync(shutil.disk_usage, archive.data.root)).free
        except OSError as exc:
            logger.warning("event=free-space-unknown reason=%r", str(exc))
            return
        low = archive.state.store_space_low
        if free < self.min_free_bytes and not low:
            logger.error(
                "event=store-space-low free_bytes=%d min_free_bytes=%d: intake refuses (452)",
                free,
                self.min_free_bytes,
            )
            await archive.append_control(
                StoreSpaceLow(at=now(), free_bytes=free, min_free_bytes=self.min_free_bytes)
            )
        elif free >= self.min_free_bytes and low:
            logger.info("event=store-space-restored free_bytes=%d", free)
            await archive.append_control(StoreSpaceRestored(at=now(), free_bytes=free))

    async def check_mailboxes(self, moment: datetime | None = None) -> None:
        """Raise the alarms that are crossed and clear those that are not any more."""
        archive, moment = self.archive, moment or now()
        for info in archive.mailboxes():
            try:
                up = await self._values(info, moment)
            except (ArchiveError, LogCorrupt, OSError):
                continue  # deleted, damaged or being opened: the next look
            raised = archive.state.alarms.get(info.mailbox_id, set())
            for alarm, (value, threshold) in up.items():
                crossed = threshold > 0 and value > threshold
                if crossed and alarm not in raised:
                    logger.warning(
                        "event=mailbox-alarm mailbox=%s alarm=%s value=%.0f threshold=%.0f",
                        info.mailbox_id,
                        alarm,
                        value,
                        threshold,
                    )
                    await archive.append_control(
                        MailboxAlarmRaised(
                            at=now(),
                            mailbox_id=info.mailbox_id,
                            alarm=alarm,
                            value=value,
                            threshold=threshold,
                        )
                    )
                elif not crossed and alarm in raised:
                    logger.info(
                        "event=mailbox-alarm-cleared mailbox=%s alarm=%s", info.mailbox_id, alarm
                    )
                    await archive.append_control(
                        MailboxAlarmCleared(at=now(), mailbox_id=info.mailbox_id, alarm=alarm)
                    )

    async def _values(self, info: MailboxInfo, moment: datetime) -> dict[str, tuple[float, float]]:
        """Each alarm's value now and its threshold."""
        archive = self.archive
        limits = thresholds(info, self.settings)
        backlog = archive.backlog(info.mailbox_id)
        oldest = await archive.oldest_waiting_at(info.mailbox_id)
        age = (moment - oldest).total_seconds() if oldest is not None else 0.0
        last_mail = archive.state.last_delivery.get(info.mailbox_id, info.created_at)
        quiet = (moment - last_mail).total_seconds()
        return {
            "age": (age, limits.age),
            "size": (float(backlog.octets), float(limits.size)),
            "quiet": (quiet, limits.quiet),
        }
