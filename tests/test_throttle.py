"""The login policy and the unlock order (services/throttle.py), in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.services.throttle import LoginGuard, LoginThrottle, UnlockQueue

ARCHIVE = "127.0.0.1"
MAILBOX = "0123456789abcdef0123456789abcdef"


async def test_journal_address_lockout_spares_the_client_that_logged_in_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    guard = LoginGuard(max_failures=10)
    guard.succeeded(ARCHIVE, MAILBOX)  # the archive's last poll
    for n in range(50):  # guesses from rotating addresses: the address counts never fill
        address = f"127.0.{n // 250}.{n % 250 + 2}"
        assert guard.locked(address, MAILBOX) == (n >= 10)
        guard.failed(address, MAILBOX)
    assert guard.locked("127.1.0.1", MAILBOX)  # a client never seen here: locked out
    assert not guard.locked(ARCHIVE, MAILBOX)  # the archive: not
    guard.failed(ARCHIVE, MAILBOX)  # its own failures count against its address only
    assert not guard.locked(ARCHIVE, MAILBOX)
    assert guard.locked(ARCHIVE, "f" * 32) is False  # other mailboxes are not affected


async def test_mailbox_failures_are_forgotten_after_a_quiet_half_hour(
    autojump_clock: trio.testing.MockClock,
) -> None:
    guard = LoginGuard(max_failures=3)
    for n in range(3):
        guard.failed(f"127.0.0.{n + 2}", MAILBOX)
    assert guard.locked("127.0.0.9", MAILBOX)
    await trio.sleep(31 * 60)
    assert not guard.locked("127.0.0.9", MAILBOX)
    guard.failed("127.0.0.9", MAILBOX)  # a first typo after the attack: no lockout
    assert not guard.locked("127.0.0.10", MAILBOX)


async def test_trust_expires(autojump_clock: trio.testing.MockClock) -> None:
    guard = LoginGuard(max_failures=1)
    guard.succeeded(ARCHIVE, MAILBOX)
    guard.failed("127.0.0.2", MAILBOX)
    assert not guard.locked(ARCHIVE, MAILBOX)
    await trio.sleep(31 * 24 * 3600)
    guard.failed("127.0.0.2", MAILBOX)
    assert guard.locked(ARCHIVE, MAILBOX)


async def test_login_throttle_doubles_and_success_clears(
    autojump_clock: trio.testing.MockClock,
) -> None:
    throttle = LoginThrottle(max_failures=2, lockout=10.0, max_lockout=35.0)
    throttle.failed("k")
    assert throttle.wait("k") is None
    throttle.failed("k")
    assert throttle.wait("k") == pytest.approx(10.0)
    throttle.failed("k")
    assert throttle.wait("k") == pytest.approx(20.0)
    throttle.failed("k")
    assert throttle.wait("k") == pytest.approx(35.0)
    throttle.succeeded("k")
    assert throttle.wait("k") is None


async def _hold(
    queue: UnlockQueue, name: str, trusted: bool, seconds: float, log: list[tuple[str, float]]
) -> None:
    async with queue.slot(trusted=trusted):
        log.append((name, trio.current_time()))
        await trio.sleep(seconds)


async def test_argon2id_lever_trusted_unlocks_overtake_queued_guesses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Guessers on rotating addresses fill the unlock queue; the archive's login (trusted)
    goes before every guess that was queued before it, waiting only for the one running."""
    queue = UnlockQueue(1, share=0.25)
    log: list[tuple[str, float]] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(_hold, queue, f"guess {n}", False, 1.0, log)
            await trio.sleep(0.001)  # queued in this order
        await trio.sleep(0.5)
        assert queue.statistics() == (1, 1, 0, 19)
        nursery.start_soon(_hold, queue, "archive", True, 1.0, log)
        await trio.sleep(2.0)
        assert [name for name, _at in log] == ["guess 0", "archive"]
        assert log[1][1] - start == pytest.approx(1.0)  # right after the running guess
        nursery.cancel_scope.cancel()
    assert queue.statistics() == (0, 0, 0, 0)


async def test_argon2id_lever_guesses_take_a_quarter_of_the_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queue = UnlockQueue(4, share=0.25)
    log: list[tuple[str, float]] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(_hold, queue, f"guess {n}", False, 1.0, log)
            await trio.sleep(0.001)  # queued in this order
        nursery.start_soon(_hold, queue, "archive", True, 1.0, log)
    starts = {name: round(at - start, 1) for name, at in log}
    # One guess at a time, each followed by three times its length of rest; the trusted
    # login is never held back by them.
    assert starts == pytest.approx(
        {"guess 0": 0.0, "archive": 0.0, "guess 1": 4.0, "guess 2": 8.0, "guess 3": 12.0}
    )


async def test_unlock_queue_trusted_first_come_first_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queue = UnlockQueue(2)
    log: list[tuple[str, float]] = []
    async with trio.open_nursery() as nursery:
        for n in range(5):
            nursery.start_soon(_hold, queue, f"trusted {n}", True, 1.0, log)
            await trio.sleep(0.01)
    assert [name for name, _ in log] == [f"trusted {n}" for n in range(5)]
    assert queue.statistics() == (0, 0, 0, 0)
