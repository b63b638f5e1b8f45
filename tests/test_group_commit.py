"""The group commit (gateway/log/_writer.py): dependent records written in the same round
as the records they name, only once those are durable; lazy records riding with others."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.log import (
    LINGER,
    AppendItem,
    CommitGroup,
    LogWriteError,
    LogWriter,
    RecordKind,
    SegmentLog,
    Written,
    iter_log,
)

SEGMENT = 1 << 20


def writers(tmp_path: Path, *names: str) -> list[LogWriter[SegmentLog]]:
    group = CommitGroup()
    return [
        LogWriter(
            SegmentLog.create(
                tmp_path / name, name.encode().ljust(16, b"-"), segment_bytes=SEGMENT
            ),
            group,
        )
        for name in names
    ]


def naming(written: list[Written]) -> list[AppendItem]:
    """A record naming the last chain value of each append it depends on."""
    return [(RecordKind.EVENT, b"".join(chains[-1] for _locations, chains in written))]


def bodies(writer: LogWriter[SegmentLog]) -> list[bytes]:
    writer.log.close()
    return [r.body for r in iter_log(writer.log.directory, writer.log.log_id)]


async def test_a_dependent_record_names_what_was_written_in_the_same_round(
    tmp_path: Path,
) -> None:
    a, b, control = writers(tmp_path, "a", "b", "control")
    group = control.group
    outcomes, final = await group.append_then(
        [
            (a, [(RecordKind.EVENT, b"a1"), (RecordKind.EVENT, b"a2")], None),
            (b, [(RecordKind.EVENT, b"b1")], None),
        ],
        control,
        naming,
    )
    assert group.rounds == 1  # one thread hand-off for both phases
    assert not isinstance(outcomes[0], LogWriteError)
    assert not isinstance(outcomes[1], LogWriteError)
    assert not isinstance(final, LogWriteError)
    a_chains, b_chains = outcomes[0][1], outcomes[1][1]
    assert len(a_chains) == 2 and len(b_chains) == 1
    assert bodies(control) == [a_chains[-1] + b_chains[-1]]
    assert bodies(a) == [b"a1", b"a2"] and bodies(b) == [b"b1"]


async def test_a_dependent_record_is_not_written_when_a_record_it_names_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, control = writers(tmp_path, "a", "b", "control")

    def full(*_args: object, **_kwargs: object) -> None:
        raise LogWriteError("no space left on device")

    monkeypatch.setattr(b.log, "append", full)
    outcomes, final = await control.group.append_then(
        [(a, [(RecordKind.EVENT, b"a1")], None), (b, [(RecordKind.EVENT, b"b1")], None)],
        control,
        naming,
    )
    assert not isinstance(outcomes[0], LogWriteError)  # written: the caller rolls it back
    assert isinstance(outcomes[1], LogWriteError)
    assert isinstance(final, LogWriteError)
    assert bodies(control) == []
    assert bodies(a) == [b"a1"]


async def test_a_dependent_record_is_not_written_when_its_own_log_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, control = writers(tmp_path, "a", "control")
    calls: list[int] = []
    real = control.log.append

    def full_on_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise LogWriteError("no space left on device")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(control.log, "append", full_on_second)
    await control.append([(RecordKind.EVENT, b"before")])
    outcomes, final = await control.group.append_then(
        [(a, [(RecordKind.EVENT, b"a1")], None)], control, naming
    )
    assert not isinstance(outcomes[0], LogWriteError)
    assert isinstance(final, LogWriteError)
    assert control.epoch == 1  # later commits that depend on this round's control batch fail
    assert bodies(control) == [b"before"]


async def test_a_stale_dependency_is_refused_with_its_dependent(tmp_path: Path) -> None:
    a, control = writers(tmp_path, "a", "control")
    outcomes, final = await control.group.append_then(
        [(a, [(RecordKind.EVENT, b"a1")], a.epoch + 1)], control, naming
    )
    assert isinstance(outcomes[0], LogWriteError) and isinstance(final, LogWriteError)
    assert bodies(a) == [] and bodies(control) == []


async def test_a_lazy_record_rides_with_the_next_round(tmp_path: Path) -> None:
    a, control = writers(tmp_path, "a", "control")
    group = control.group
    async with trio.open_nursery() as nursery:
        nursery.start_soon(control.append_lazily, [(RecordKind.EVENT, b"audit")])
        await trio.testing.wait_all_tasks_blocked()
        assert group.rounds == 0  # waiting for a round to ride with
        await a.append([(RecordKind.EVENT, b"a1")])
    assert group.rounds == 1
    assert bodies(control) == [b"audit"]


async def test_a_lazy_record_alone_is_written_after_the_linger(tmp_path: Path) -> None:
    (control,) = writers(tmp_path, "control")
    started = trio.current_time()
    await control.append_lazily([(RecordKind.EVENT, b"audit")])
    assert trio.current_time() - started >= LINGER
    assert control.group.rounds == 1
    assert bodies(control) == [b"audit"]


async def test_a_dependent_record_that_cannot_be_built_is_refused_not_hung(
    tmp_path: Path,
) -> None:
    a, control = writers(tmp_path, "a", "control")

    def broken(_written: list[Written]) -> list[AppendItem]:
        raise ValueError("no witness today")

    with trio.fail_after(5):
        outcomes, final = await control.group.append_then(
            [(a, [(RecordKind.EVENT, b"a1")], None)], control, broken
        )
        assert not isinstance(outcomes[0], LogWriteError)
        assert isinstance(final, LogWriteError) and "no witness today" in str(final)
        await control.append([(RecordKind.EVENT, b"after")])  # the group goes on
    assert bodies(control) == [b"after"]
