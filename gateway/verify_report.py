"""What ``gateway verify`` reports (SPEC.md 8): each problem with where it is, the notes, the
totals, and how they are printed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Problem", "Progress", "Report", "print_report", "progress_printer"]


@dataclass(frozen=True, slots=True)
class Problem:
    where: str  # "control" or a mailbox id
    reason: str
    path: str = ""
    offset: int | None = None

    def __str__(self) -> str:
        at = f" at {self.path}" if self.path else ""
        at += f" offset {self.offset}" if self.offset is not None else ""
        return f"{self.where}: {self.reason}{at}"


@dataclass(slots=True)
class Report:
    mailboxes: int = 0
    messages: int = 0
    message_bytes: int = 0
    records: int = 0
    log_bytes: int = 0
    opened_messages: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Per log ("control" or a mailbox id): the segment generations the control log confirms
    # (what a copy of the folder reads, ``gateway store migrate``).
    cuts: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


Progress = Callable[[str, int], None]


def progress_printer(interactive: bool) -> Progress:
    """verify's progress on standard error: a live counter on a terminal, else a line
    every 100,000 records."""

    def progress(where: str, count: int) -> None:
        if interactive:
            print(f"\r{where}: {count} records ", end="", file=sys.stderr, flush=True)
        elif count % 100_000 == 0:
            print(f"progress: {where}: {count} records", file=sys.stderr, flush=True)

    return progress


def print_report(report: Report, out: TextIO = sys.stdout) -> None:
    print(
        f"mailboxes {report.mailboxes}  messages {report.messages}  "
        f"message bytes {report.message_bytes}  records {report.records}  "
        f"log bytes {report.log_bytes}",
        file=out,
    )
    if report.opened_messages:
        print(f"opened and authenticated {report.opened_messages} messages", file=out)
    for note in report.notes:
        print(f"note: {note}", file=out)
    for problem in report.problems:
        print(f"PROBLEM: {problem}", file=out)
    print("OK" if report.ok else f"FAILED: {len(report.problems)} problem(s)", file=out)
