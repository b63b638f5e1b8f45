"""Health checks and the Prometheus endpoint on the admin listener (SPEC.md 13.7).

``GET /healthz`` answers 200 while the journal's event loop runs; ``GET /readyz`` answers 200
when every listener serves (under a supervisor: every protocol worker is running) and the
store takes writes (the last group-commit round succeeded and the data folder's file system
is not under ``[store] min_free_bytes``), 503 with the reasons otherwise. Neither needs a
login, and neither does any work a client could make expensive: they read state the journal
keeps anyway. ``GET /metrics`` needs an API token (``Authorization: Bearer``, as a
Prometheus scrape configuration sends it); a missing or wrong one gets 401 and counts as a
failed admin login.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from ..events import now
from ..log import LogCorrupt
from ..services.accounts import Accounts, LoginRefused
from ..services.archive import Archive, ArchiveError, MailboxUnavailable, NoSuchMailbox
from ..services.metrics import Gauges, MailboxGauges, Metrics

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["Monitoring", "Response"]

EXPOSITION_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(eq=False)
class Monitoring:
    gateway: Gateway
    archive: Archive
    accounts: Accounts
    metrics: Metrics

    def healthz(self) -> Response:
        return Response(200, b"ok\n")

    def readyz(self) -> Response:
        problems = self.unready()
        if problems:
            return Response(503, ("not ready: " + "; ".join(problems) + "\n").encode())
        return Response(200, b"ready\n")

    def unready(self) -> list[str]:
        """Why the gateway should not get traffic now (none: it should)."""
        gateway, problems = self.gateway, []
        if not gateway.listening:
            problems.append("the listeners are not up yet")
        gone = [n for n, sessions in enumerate(gateway.worker_sessions(), 1) if sessions is None]
        if gone:
            problems.append("protocol worker(s) not running: " + ", ".join(map(str, gone)))
        failure = self.archive.commit_group.last_error
        if failure is not None:
            problems.append(f"the last write to the store failed: {failure}")
        if self.archive.state.store_space_low:  # the alarms' look at the free space (13.8)
            problems.append("the data folder's file system is under store.min_free_bytes")
        return problems

    async def scrape(self, authorization: bytes | None, peer: str) -> Response:
        token = _bearer(authorization)
        if token is None:
            return _unauthorized("an API token is needed (Authorization: Bearer)")
        try:
            await self.accounts.login_token(token, peer)
        except LoginRefused as exc:
            return _unauthorized(exc.reason)
        gauges = await self.gauges()
        return Response(200, self.metrics.exposition(gauges), [(b"content-type", EXPOSITION_TYPE)])

    async def gauges(self) -> Gauges:
        archive, gateway = self.archive, self.gateway
        await archive.all_opened()
        storage = await archive.storage_usage()
        expiry = None
        if gateway.tls is not None:
            expiry = (await trio.to_thread.run_sync(gateway.tls.summary))[2].timestamp()
        journal = gateway.journal
        return Gauges(
            sessions_active=gateway.sessions_active,
            workers=journal.workers if journal is not None else 0,
            workers_connected_total=journal.connected_total if journal is not None else 0,
            store_bytes=storage.used_bytes,
            store_free_bytes=storage.free_bytes,
            certificate_expiry=expiry,
            store_space_low=archive.state.store_space_low,
            mailboxes=[m async for m in self._mailboxes()],
        )

    async def _mailboxes(self) -> AsyncIterator[MailboxGauges]:
        archive, moment = self.archive, now()
        for info in archive.mailboxes():
            mailbox_id = info.mailbox_id
            damaged = archive.damaged(mailbox_id) is not None
            try:
                backlog = archive.backlog(mailbox_id)
            except (MailboxUnavailable, NoSuchMailbox):
                continue  # deleted meanwhile
            oldest_age = None
            try:
                at = await archive.oldest_waiting_at(mailbox_id)
            except (ArchiveError, LogCorrupt, OSError):  # expunged meanwhile: no age this time
                at = None
            if at is not None:
                oldest_age = max(0.0, (moment - at).total_seconds())
            retrieved = archive.state.last_retrieval.get(mailbox_id)
            yield MailboxGauges(
                mailbox_id=mailbox_id,
                name=info.name,
                status=str(info.status),
                messages=backlog.messages,
                octets=backlog.octets,
                oldest_age=oldest_age,
                last_retrieval_age=(
                    max(0.0, (moment - retrieved).total_seconds()) if retrieved else None
                ),
                damaged=damaged,
                alarms=frozenset(archive.state.alarms.get(mailbox_id, ())),
            )


def _bearer(authorization: bytes | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(why: str) -> Response:
    return Response(
        401,
        f"unauthorized: {why}\n".encode(),
        [(b"www-authenticate", b'Bearer realm="gateway"')],
    )
