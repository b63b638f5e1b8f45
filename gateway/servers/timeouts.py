"""One timer for all of a session's reads.

A ``trio.fail_after`` around every read enters and leaves a cancel scope each time, among the
larger costs of a short SMTP session in profiles. :class:`ReadTimer` keeps one scope around the
whole session and moves its deadline instead: set before each read, cleared after it, so the
work between reads (a commit waiting for its round) is never cut short by it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["ReadTimer"]


class ReadTimer:
    def __init__(self) -> None:
        self._scope = trio.CancelScope()

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around the session's loop (once): raises trio.TooSlowError when a read timed out."""
        with self._scope:
            yield
        if self._scope.cancelled_caught:
            raise trio.TooSlowError

    async def receive(self, stream: trio.abc.ReceiveStream, size: int, seconds: float) -> bytes:
        """``stream.receive_some(size)``, given up after ``seconds``."""
        self._scope.deadline = trio.current_time() + seconds
        try:
            return bytes(await stream.receive_some(size))
        finally:
            self._scope.deadline = math.inf
