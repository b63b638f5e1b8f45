"""gateway/threads.py: blocking calls off the trio thread."""

from __future__ import annotations

import threading
import time

import pytest
import trio

from gateway.threads import ThreadPool


async def test_a_call_returns_its_result_from_another_thread() -> None:
    pool = ThreadPool("test", 2)
    assert await pool.run(lambda a, b: (a + b, threading.current_thread().name), 2, 3) == (
        5,
        "test",
    )


async def test_an_exception_reaches_the_caller() -> None:
    pool = ThreadPool("test", 1)

    def fail() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        await pool.run(fail)
    assert await pool.run(lambda: "still serving") == "still serving"


async def test_calls_run_at_once_up_to_the_limit() -> None:
    pool = ThreadPool("test", 3)
    running, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(pool.run, work)
    assert most == 3


async def test_idle_threads_exit_and_new_work_starts_one_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ThreadPool, "IDLE", 0.05)
    pool = ThreadPool("test-idle", 2)
    await pool.run(lambda: None)
    assert any(t.name == "test-idle" for t in threading.enumerate())
    deadline = time.monotonic() + 5
    while any(t.name == "test-idle" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the idle thread did not exit"
        await trio.sleep(0.01)
    assert await pool.run(lambda: 7) == 7
