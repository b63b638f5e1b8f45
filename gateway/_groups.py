"""Exception groups: trio nurseries wrap what ends them; callers want the error itself."""

from __future__ import annotations

__all__ = ["leaves"]


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside nested groups (each nursery level adds one)."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
