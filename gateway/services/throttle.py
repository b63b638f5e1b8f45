"""Failed-login throttling and the order of Argon2id unlocks (SPEC.md 14).

Theory of operation
-------------------
:class:`LoginThrottle` counts failures in a row per key and locks a key out once they pile
up. :class:`LoginGuard` is the policy of the mail logins (POP3 retrieval, both proxies) on top
of it: failures count per client address and per *mailbox* (its canonical id, however the
login spelled it), never per login text, so another spelling of the same mailbox cannot start
a fresh count. A lockout keyed on the mailbox would let anyone who knows the journal address
lock the archive out, so a client address with a successful login to the mailbox within
``TRUST_WINDOW`` is *trusted* for it: the mailbox's lockout does not apply to it, and its
failures count only against its own address. The legitimate archive, which logged in from its
address before, keeps getting in while an attacker's failures lock the mailbox for everyone
else.

:class:`UnlockQueue` orders the Argon2id work a password login costs. Trusted logins go first;
untrusted ones (no recent success from that address: an attacker on rotating addresses, or a
client logging in for the first time) run at most ``UNTRUSTED_UNLOCKS`` at once and take at
most ``UNTRUSTED_SHARE`` of the time, so no number of guessing sessions can make a trusted
login wait for more than the one untrusted derivation already running.

Everything here is in-memory and bounded; a restart forgets it (then the first success from
each address makes it trusted again).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

__all__ = [
    "TRUST_WINDOW",
    "UNTRUSTED_SHARE",
    "UNTRUSTED_UNLOCKS",
    "LoginGuard",
    "LoginThrottle",
    "TrustedClients",
    "UnlockQueue",
]

# An archive polls every few minutes; a month of silence (holidays, an outage) still counts as
# "logged in from here before".
TRUST_WINDOW = 30 * 24 * 3600.0
MAX_TRUSTED = 10_000  # (address, mailbox) pairs kept; beyond, the oldest success is forgotten
# Untrusted Argon2id derivations at once: with one, a trusted login waits for at most one
# (the gateway runs one derivation at a time process-wide anyway, see crypto._keys).
UNTRUSTED_UNLOCKS = 1
# The part of the time untrusted derivations may take: after one of d seconds, the next waits
# d * (1 / share - 1). A quarter leaves three quarters of a core (or all four lanes' worth)
# to mail while guessers queue.
UNTRUSTED_SHARE = 0.25


@dataclass(slots=True)
class _Failures:
    count: int = 0
    locked_until: float = 0.0
    last: float = 0.0


@dataclass(slots=True)
class LoginThrottle:
    """Counts failures in a row per key (a client address, a mailbox, a username). From the
    ``max_failures``-th on, the key is locked out for ``lockout`` seconds, doubling with each
    further failure up to ``max_lockout``; a success clears the key, and so does
    ``forget_after`` seconds without a failure (None: never). Bounded: beyond ``max_keys``
    keys, those no longer locked are forgotten."""

    max_failures: int = 5
    lockout: float = 30.0
    max_lockout: float = 15 * 60.0
    max_keys: int = 10_000
    forget_after: float | None = None
    _keys: dict[str, _Failures] = field(default_factory=dict)

    def wait(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or None."""
        failures = self._keys.get(key)
        if failures is None:
            return None
        left = failures.locked_until - trio.current_time()
        return left if left > 0 else None

    def failed(self, key: str) -> None:
        moment = trio.current_time()
        if len(self._keys) > self.max_keys:
            for name, value in list(self._keys.items()):
                if value.locked_until < moment:
                    del self._keys[name]
        failures = self._keys.setdefault(key, _Failures())
        if self.forget_after is not None and moment - failures.last > self.forget_after:
            failures.count = 0
        failures.count += 1
        failures.last = moment
        if failures.count >= self.max_failures:
            extra = failures.count - self.max_failures
            seconds = min(self.max_lockout, self.lockout * 2 ** min(extra, 32))
            failures.locked_until = moment + seconds

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)


@dataclass(slots=True)
class TrustedClients:
    """(client address, mailbox id) pairs with a successful login within ``window`` seconds,
    at most ``max_pairs`` of them (the oldest success is forgotten first)."""

    window: float = TRUST_WINDOW
    max_pairs: int = MAX_TRUSTED
    _pairs: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)
    _addresses: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def succeeded(self, address: str, mailbox_id: str) -> None:
        moment = trio.current_time()
        pair = (address, mailbox_id)
        self._pairs[pair] = moment
        self._pairs.move_to_end(pair)
        self._addresses[address] = moment
        self._addresses.move_to_end(address)
        while len(self._pairs) > self.max_pairs:
            self._pairs.popitem(last=False)
        while len(self._addresses) > self.max_pairs:
            self._addresses.popitem(last=False)

    def trusted(self, address: str, mailbox_id: str) -> bool:
        at = self._pairs.get((address, mailbox_id))
        return at is not None and trio.current_time() - at <= self.window

    def known(self, address: str) -> bool:
        """Whether ``address`` logged in to any mailbox within the window (the session
        limits keep a reserve of slots for such clients)."""
        at = self._addresses.get(address)
        return at is not None and trio.current_time() - at <= self.window


@dataclass(slots=True)
class LoginGuard:
    """Who may try a mail login now (see the module docstring). ``mailbox_id`` is the
    canonical id a login named, or "" when it named none (then only the address counts)."""

    max_failures: int = 10
    lockout: float = 60.0
    by_address: LoginThrottle = field(init=False)
    by_mailbox: LoginThrottle = field(init=False)
    trust: TrustedClients = field(default_factory=TrustedClients)

    def __post_init__(self) -> None:
        self.by_address = LoginThrottle(max_failures=self.max_failures, lockout=self.lockout)
        # Failures on a mailbox are forgotten after two of the longest lockouts without one,
        # so an attack long over does not lock out a client's first typo.
        self.by_mailbox = LoginThrottle(
            max_failures=self.max_failures, lockout=self.lockout, forget_after=30 * 60.0
        )

    def trusted(self, address: str, mailbox_id: str) -> bool:
        return bool(mailbox_id) and self.trust.trusted(address, mailbox_id)

    def locked(self, address: str, mailbox_id: str) -> bool:
        """Whether this attempt is refused unheard (THROTTLED)."""
        if self.by_address.wait(address) is not None:
            return True
        if not mailbox_id or self.trusted(address, mailbox_id):
            return False
        return self.by_mailbox.wait(mailbox_id) is not None

    def failed(self, address: str, mailbox_id: str) -> None:
        self.by_address.failed(address)
        if mailbox_id and not self.trusted(address, mailbox_id):
            self.by_mailbox.failed(mailbox_id)

    def succeeded(self, address: str, mailbox_id: str) -> None:
        """A login to ``mailbox_id`` from ``address`` succeeded: the address's count is
        cleared and the pair trusted. The mailbox's count of untrusted failures stays (a
        success proves nothing about the other clients)."""
        self.by_address.succeeded(address)
        if mailbox_id:
            self.trust.succeeded(address, mailbox_id)


class UnlockQueue:
    """At most ``slots`` Argon2id unlocks at once; trusted ones first, untrusted ones at most
    ``untrusted_slots`` at once and ``share`` of the time (see the module docstring). Within
    each class, first come first served."""

    def __init__(
        self,
        slots: int,
        *,
        untrusted_slots: int = UNTRUSTED_UNLOCKS,
        share: float = UNTRUSTED_SHARE,
    ) -> None:
        if slots < 1 or untrusted_slots < 1 or not 0 < share <= 1:
            raise ValueError("slots and untrusted_slots at least 1, share in (0, 1]")
        self.slots = slots
        self.untrusted_slots = min(untrusted_slots, slots)
        self.share = share
        self.running = 0
        self.running_untrusted = 0
        self._trusted: deque[object] = deque()
        self._untrusted: deque[object] = deque()
        self._untrusted_from = -math.inf  # no untrusted unlock may start before this
        self._changed = trio.Event()

    def statistics(self) -> tuple[int, int, int, int]:
        """(running, running untrusted, trusted waiting, untrusted waiting)."""
        return self.running, self.running_untrusted, len(self._trusted), len(self._untrusted)

    @asynccontextmanager
    async def slot(self, *, trusted: bool) -> AsyncIterator[None]:
        await self._acquire(trusted)
        started = trio.current_time()
        try:
            yield
        finally:
            self.running -= 1
            if not trusted:
                self.running_untrusted -= 1
                took = trio.current_time() - started
                self._untrusted_from = trio.current_time() + took * (1 / self.share - 1)
            self._wake()

    def _may_start(self, ticket: object, trusted: bool) -> bool:
        if self.running >= self.slots:
            return False
        if trusted:
            return self._trusted[0] is ticket
        return (
            not self._trusted
            and self._untrusted[0] is ticket
            and self.running_untrusted < self.untrusted_slots
            and trio.current_time() >= self._untrusted_from
        )

    async def _acquire(self, trusted: bool) -> None:
        queue = self._trusted if trusted else self._untrusted
        ticket = object()
        queue.append(ticket)
        try:
            while not self._may_start(ticket, trusted):
                changed = self._changed
                # An untrusted unlock may also be waiting for its share of the time.
                due = self._untrusted_from
                with trio.move_on_at(
                    due if not trusted and due > trio.current_time() else math.inf
                ):
                    await changed.wait()
        except BaseException:
            queue.remove(ticket)
            self._wake()
            raise
        queue.popleft()
        self.running += 1
        if not trusted:
            self.running_untrusted += 1
        self._wake()  # the next in line may be able to start too

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
