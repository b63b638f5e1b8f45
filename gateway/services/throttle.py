"""Failed-login throttling, shared by the admin API and POP3 retrieval."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

__all__ = ["LoginThrottle"]


@dataclass(slots=True)
class _Failures:
    count: int = 0
    locked_until: float = 0.0


@dataclass(slots=True)
class LoginThrottle:
    """Counts failures in a row per key (a client address, a username). From the
    ``max_failures``-th on, the key is locked out for ``lockout`` seconds, doubling with each
    further failure up to ``max_lockout``; a success clears the key. Bounded: beyond
    ``max_keys`` keys, those no longer locked are forgotten."""

    max_failures: int = 5
    lockout: float = 30.0
    max_lockout: float = 15 * 60.0
    max_keys: int = 10_000
    _keys: dict[str, _Failures] = field(default_factory=dict)

    def wait(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or None."""
        failures = self._keys.get(key)
        if failures is None:
            return None
        left = failures.locked_until - trio.current_time()
        return left if left > 0 else None

    def failed(self, key: str) -> None:
        if len(self._keys) > self.max_keys:
            moment = trio.current_time()
            for name, value in list(self._keys.items()):
                if value.locked_until < moment:
                    del self._keys[name]
        failures = self._keys.setdefault(key, _Failures())
        failures.count += 1
        if failures.count >= self.max_failures:
            extra = failures.count - self.max_failures
            seconds = min(self.max_lockout, self.lockout * 2 ** min(extra, 32))
            failures.locked_until = trio.current_time() + seconds

    def succeeded(self, key: str) -> None:
        self._keys.pop(key, None)
