"""Limits on sessions: how many at once in all, and from one client address."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SessionLimiter"]


@dataclass(slots=True)
class SessionLimiter:
    """At most ``total`` sessions at once, at most ``per_client`` from one address."""

    total: int
    per_client: int
    active: int = 0
    by_client: dict[str, int] = field(default_factory=dict)

    def try_acquire(self, client: str) -> bool:
        if self.active >= self.total or self.by_client.get(client, 0) >= self.per_client:
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
