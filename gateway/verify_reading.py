"""``gateway verify``: one log read once, as a stream (SPEC.md 8): its records checked as
they pass, its tree file beside them (``verify_trees``), what its end is (a torn tail being
written, or cut short by a crash), and where it ends for the witness check."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .log import TREE_FILE, LogCorrupt, LogRecord, iter_log, segment_name
from .verify_report import Problem, Progress, Report
from .verify_trees import SignedHead, TreeCheck

__all__ = ["LogEnd", "Reading", "Torn", "note_torn"]


@dataclass(frozen=True, slots=True)
class Torn:
    path: Path
    offset: int
    size: int


class Reading:
    """A log's records from ``from_seq`` on, read and checked as they are iterated (once);
    after that, whether the reading stopped at a problem, the last record and the partial
    record the log ends in, if it does. No record is kept."""

    def __init__(
        self,
        report: Report,
        where: str,
        directory: Path,
        log_id: bytes,
        cuts: Mapping[int, int] | None,
        progress: Progress | None,
        from_seq: int = 0,
    ) -> None:
        self.report, self.where, self.progress = report, where, progress
        self.directory, self.log_id, self.cuts, self.from_seq = directory, log_id, cuts, from_seq
        self.failed = False
        self.last: LogRecord | None = None
        self.torn: Torn | None = None
        self.tree = TreeCheck(directory)

    def __iter__(self) -> Iterator[LogRecord]:
        report, progress = self.report, self.progress
        try:
            for record in iter_log(
                self.directory,
                self.log_id,
                cuts=self.cuts,
                keep_bodies=True,
                on_torn_tail=self._on_torn,
                from_seq=self.from_seq,
            ):
                report.records += 1
                report.log_bytes += record.location.size
                if progress is not None and report.records % 1000 == 0:
                    progress(self.where, report.records)
                self.last = record
                self.tree.see(record)
                yield record
        except LogCorrupt as exc:
            self.failed = True
            report.problems.append(Problem(self.where, exc.reason, str(exc.path), exc.offset))

    def check_tree(self, signed: list[SignedHead]) -> None:
        """Once the log is read: its tree file, and the heads signed of it (SPEC.md 8.1)."""
        if self.failed:
            return  # that problem stands for the tree too
        records = self.last.seq + 1 if self.last is not None else 0
        self.tree.finish(records, signed)
        path = str(self.directory / TREE_FILE)
        self.report.problems.extend(
            Problem(self.where, what, path, offset) for what, offset in self.tree.problems
        )
        self.report.notes.extend(f"{self.where}: {note}" for note in self.tree.notes)

    def _on_torn(self, path: Path, offset: int, size: int) -> None:
        if self.torn is None:
            self.torn = Torn(path, offset, size)


def note_torn(report: Report, where: str, torn: Torn | None) -> None:
    if torn is not None:
        report.notes.append(
            f"{where}: {torn.path} ends in a partial record at offset {torn.offset} "
            f"({torn.size} bytes): a write in progress, or cut short by a crash (opening the "
            "log cuts it off)"
        )


@dataclass(frozen=True, slots=True)
class LogEnd:
    """Where a mailbox log ends: the seq of its next record, and the file and offset."""

    next_seq: int
    path: str
    offset: int | None
    torn: Torn | None

    @classmethod
    def of(cls, last: LogRecord | None, torn: Torn | None, log_dir: Path) -> LogEnd:
        if torn is not None:
            return cls(last.seq + 1 if last else 0, str(torn.path), torn.offset, torn)
        if last is None:
            return cls(0, str(log_dir), None, None)
        name = segment_name(last.location.segment)
        return cls(last.seq + 1, str(log_dir / name), None, None)
