"""Limits on connections: how many at once in all and from one client address, counted from
accept (before any TLS handshake), and how many file descriptors they may take together.

Theory of operation
-------------------
Each listener protocol has one :class:`SessionLimiter` (SMTP's three listeners share one,
POP3's two another, the admin listener its own). The gateway's accept loop takes a slot for a
connection the moment it accepts it, before the TLS handshake of an implicit-TLS listener, and
gives it back when the connection closes: a client that opens connections and never speaks
holds a slot like any other, for at most the handshake timeout. A connection over a limit is
refused at once (see ``gateway.Gateway._accept``).

The limits together must fit the process's descriptors, or one listener's connections could
take every descriptor and leave the others unable to accept at all. :func:`fit_to_descriptors`
lowers them (in proportion) until every connection can have its descriptors (two for SMTP and
POP3: the proxies hold an upstream connection) with ``FD_RESERVE`` left over for what is not a
connection.

Connections refused at accept leave no record each (a flood of them would grow the control log
as fast as it arrives): :class:`TrafficTally` counts them per listener, and the gateway writes
one ``ConnectionsSummarized`` per listener at most every ``SUMMARY_INTERVAL`` seconds. So are
*quiet* sessions (no message stored, no login tried: nothing but refusals and noise) once they
end faster than :class:`AuditRate` allows: their own records come at most ``QUIET_RATE`` a
second after a burst of ``QUIET_BURST``, the rest are folded into the summary. Together the
control log grows by a bounded amount a second under hostile traffic, whatever its rate.
"""

from __future__ import annotations

import os
import resource
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from ..events import ConnectionsSummarized, RefusalCount, now

__all__ = [
    "FD_RESERVE",
    "QUIET_BURST",
    "QUIET_RATE",
    "SUMMARY_INTERVAL",
    "TRUSTED_RESERVE",
    "AuditRate",
    "SessionLimiter",
    "TrafficTally",
    "descriptor_limit",
    "descriptors_in_use",
    "fit_to_descriptors",
    "refusal_counts",
]

# Descriptors kept for what is not a client connection: log segments opened to be read
# (retrieval, compaction, verify), mailboxes created after start (each log keeps its tail
# open), the certificate, a hot backup, worker threads' files.
FD_RESERVE = 256


# The part of POP3's sessions kept for clients that logged in from their address within the
# trust window (services.throttle): guessers on rotating addresses can fill the rest of the
# sessions, never the archive's way in.
TRUSTED_RESERVE = 0.1


@dataclass(slots=True)
class SessionLimiter:
    """At most ``total`` sessions at once, at most ``per_client`` from one address; the last
    ``reserve`` of the total only for clients the caller says are trusted."""

    total: int
    per_client: int
    reserve: int = 0
    active: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def try_acquire(self, client: str, *, trusted: bool = False) -> bool:
        limit = self.total if trusted else self.total - self.reserve
        if self.active >= limit or self.by_client.get(client, 0) >= self.per_client:
            return False
        self.active += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        return True

    def release(self, client: str) -> None:
        self.active -= 1
        left = self.by_client[client] - 1
        if left:
            self.by_client[client] = left
        else:
            del self.by_client[client]


def descriptor_limit() -> int:
    """The process's open-file limit, raised to its hard limit first (a service manager's
    soft default of 1024 is far below what 700 sessions need)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def descriptors_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened
    except OSError:
        return 64  # no /proc: a guess at what start-up opened


def fit_to_descriptors(
    limiters: Mapping[str, tuple[SessionLimiter, int]], available: int
) -> dict[str, tuple[int, int]]:
    """Lower the limiters' totals (and per-client limits with them) in proportion until
    ``sum(total * descriptors per connection)`` fits ``available``; each keeps at least one.
    Returns what changed: name -> (configured total, new total)."""
    needed = sum(limiter.total * each for limiter, each in limiters.values())
    if needed <= available:
        return {}
    share = max(available, 0) / needed
    changed = {}
    for name, (limiter, _each) in limiters.items():
        total = max(1, int(limiter.total * share))
        changed[name] = (limiter.total, total)
        limiter.total = total
        limiter.per_client = min(limiter.per_client, total)
        limiter.reserve = min(limiter.reserve, total - 1)
    return changed


# Quiet sessions recorded one by one: a burst of this many, then this many a second. A
# monitoring probe or a client's occasional empty session always fits.
QUIET_BURST = 60
QUIET_RATE = 1.0


@dataclass(slots=True)
class AuditRate:
    """A token bucket: whether a quiet session gets its own record now."""

    rate: float = QUIET_RATE
    burst: float = QUIET_BURST
    _tokens: float | None = None
    _at: float = 0.0

    def allow(self) -> bool:
        moment = trio.current_time()
        if self._tokens is None:
            self._tokens = self.burst
        else:
            self._tokens = min(self.burst, self._tokens + (moment - self._at) * self.rate)
        self._at = moment
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


# A listener's traffic without records of its own is summed up at most this often.
SUMMARY_INTERVAL = 60.0
# Distinct client addresses a summary counts; beyond, its ``clients`` is a lower bound.
MAX_COUNTED_CLIENTS = 10_000


@dataclass(slots=True)
class _Tally:
    since: float
    refused: int = 0
    sessions: int = 0
    clients: set[str] = field(default_factory=set)
    refusals: Counter[tuple[str, int, str]] = field(default_factory=Counter)


class TrafficTally:
    """What listeners did without a record of their own (connections refused at accept,
    quiet sessions folded in), summed up per listener for ``ConnectionsSummarized``."""

    def __init__(self) -> None:
        self._listeners: dict[str, _Tally] = {}

    def _tally(self, listener: str, client: str) -> _Tally:
        tally = self._listeners.get(listener)
        if tally is None:
            tally = self._listeners[listener] = _Tally(trio.current_time())
        if len(tally.clients) < MAX_COUNTED_CLIENTS:
            tally.clients.add(client)
        return tally

    def refused(self, listener: str, client: str) -> None:
        self._tally(listener, client).refused += 1

    def folded(
        self, listener: str, client: str, refusals: Mapping[tuple[str, int, str], int]
    ) -> None:
        tally = self._tally(listener, client)
        tally.sessions += 1
        tally.refusals.update(refusals)

    def take(self) -> list[ConnectionsSummarized]:
        """One summary per listener with anything to say, and a fresh start."""
        moment = trio.current_time()
        summaries = [
            ConnectionsSummarized(
                at=now(),
                listener=listener,
                seconds=round(moment - tally.since, 3),
                refused=tally.refused,
                sessions=tally.sessions,
                clients=len(tally.clients),
                refusals=refusal_counts(tally.refusals),
            )
            for listener, tally in self._listeners.items()
        ]
        self._listeners.clear()
        return summaries


def refusal_counts(refusals: Mapping[tuple[str, int, str], int]) -> tuple[RefusalCount, ...]:
    return tuple(
        RefusalCount(stage=stage, code=code, enhanced=enhanced, count=count)
        for (stage, code, enhanced), count in sorted(refusals.items())
    )
