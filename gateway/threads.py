"""Blocking calls off the trio thread, for the hot paths.

``trio.to_thread.run_sync`` costs about 110 microseconds of CPU per call on this project's
machines (a capacity limiter, the thread cache, naming the OS thread for every job, context
copies); the group commit hands a round to a thread for every fdatasync and POP3 hands one
over for every message it opens. :class:`ThreadPool` does the same job with a queue and a
wake-up through trio's token, for about 65. Its threads start when there is more work waiting
than idle threads (up to ``limit``) and exit after ``IDLE`` seconds without work. A call
cannot be cancelled once handed over: the caller waits for it, as ``to_thread`` does by
default.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import trio

__all__ = ["ThreadPool"]

_R = TypeVar("_R")


@dataclass(eq=False, slots=True)
class _Job:
    work: Callable[[], object]
    token: trio.lowlevel.TrioToken
    task: trio.lowlevel.Task
    result: object = None
    error: BaseException | None = None


class ThreadPool:
    IDLE = 10.0  # seconds a thread waits for work before it exits

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._waiting = 0  # jobs put and not yet taken by a thread

    async def run(self, fn: Callable[..., _R], *args: object) -> _R:
        """``fn(*args)`` in one of the pool's threads; its result, or its exception."""
        job = _Job(
            functools.partial(fn, *args),
            trio.lowlevel.current_trio_token(),
            trio.lowlevel.current_task(),
        )
        with self._lock:
            self._waiting += 1
            start = self._waiting > self._idle and self._threads < self.limit
            if start:
                self._threads += 1
                self._idle += 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name=self.name, daemon=True).start()
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        if job.error is not None:
            raise job.error
        return cast(_R, job.result)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._waiting == 0:
                        self._threads -= 1
                        self._idle -= 1
                        return
                continue
            with self._lock:
                self._waiting -= 1
                self._idle -= 1
            try:
                job.result = job.work()
            except BaseException as exc:  # handed back to the task that waits for it
                job.error = exc
            with self._lock:
                self._idle += 1
            # The task waits uncancellably for this, so its run is still going.
            job.token.run_sync_soon(trio.lowlevel.reschedule, job.task)
