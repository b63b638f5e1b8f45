"""Log lines (SPEC.md 12.1): under systemd (``JOURNAL_STREAM`` names standard error) one line
per event with a syslog priority prefix and no timestamp, children keeping their name;
otherwise a timestamp and a level name. A message with a line break never makes a line that
starts with a prefix of its own choosing."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.logs import JournalFormatter, formatter, priority, to_journal

from .gateway_helpers import SERVE_CONFIG

ROOT = Path(__file__).resolve().parent.parent
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
# The variables by which a gateway knows it runs under systemd: none leaks in from the
# environment the tests run in.
SYSTEMD = ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def journal_stream_of(fd: int) -> str:
    status = os.fstat(fd)
    return f"{status.st_dev}:{status.st_ino}"


def serve_and_stop(tmp_path: Path, *, journal: bool) -> list[str]:
    """Every line a `gateway serve --workers 1` writes on standard error from its start to
    its SIGTERM, with ``JOURNAL_STREAM`` naming that pipe (as systemd sets it) or unset."""
    config = tmp_path / "gateway.toml"
    config.write_text(SERVE_CONFIG.format(data=tmp_path / "data"))
    env = {k: v for k, v in os.environ.items() if k not in SYSTEMD}
    env["GATEWAY_ADMIN_PASSWORD"] = "an admin password for tests"
    read_end, write_end = os.pipe()
    if journal:
        env["JOURNAL_STREAM"] = journal_stream_of(write_end)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", "1"],
            cwd=ROOT,
            stderr=write_end,
            env=env,
        )
    finally:
        os.close(write_end)
    lines: list[str] = []
    reader_file = open(read_end, encoding="utf-8")  # noqa: SIM115 (closed below)

    def read() -> None:
        lines.extend(reader_file)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("event=supervisor-ready" in line for line in lines):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        reader.join(timeout=10)  # the pipe ends once the children are gone too
        assert not reader.is_alive()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        reader_file.close()
    return lines


@pytest.mark.slow
def test_under_systemd_lines_have_a_priority_and_no_timestamp(tmp_path: Path) -> None:
    lines = serve_and_stop(tmp_path, journal=True)
    for line in lines:
        assert re.match(r"<[2-7]>(?:(?:journal|worker-1) )?event=[a-z0-9-]+( |$)", line), line
        assert not TIMESTAMP.search(line), line
    # The supervisor's own lines, each child's under its name, and a warning's priority.
    assert "<6>event=supervisor-ready workers=1\n" in lines
    assert any(line.startswith("<6>journal event=listening name=admin ") for line in lines)
    assert any(line.startswith("<6>worker-1 event=listening name=smtp ") for line in lines)
    assert any(line.startswith("<4>event=insecure-kdf ") for line in lines)
    assert any(line.startswith("<6>journal event=stopping ") for line in lines)


@pytest.mark.slow
def test_elsewhere_lines_have_a_timestamp_and_a_level(tmp_path: Path) -> None:
    lines = serve_and_stop(tmp_path, journal=False)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    for line in lines:
        assert re.match(
            rf"{stamp} (?:INFO|WARNING|ERROR) (?:(?:journal|worker-1) )?event=[a-z0-9-]+", line
        ), line
    assert any(re.match(rf"{stamp} INFO event=supervisor-ready ", line) for line in lines)
    assert any(re.match(rf"{stamp} INFO journal event=listening ", line) for line in lines)
    assert any(re.match(rf"{stamp} INFO worker-1 event=listening ", line) for line in lines)
    assert any(re.match(rf"{stamp} WARNING event=insecure-kdf ", line) for line in lines)


def test_journal_stream_counts_only_when_it_names_the_stream(tmp_path: Path) -> None:
    """systemd.exec(5): standard error redirected elsewhere keeps the inherited variable."""
    with open(tmp_path / "log", "w") as stream, open(tmp_path / "other", "w") as other:
        assert to_journal(stream, {"JOURNAL_STREAM": journal_stream_of(stream.fileno())})
        assert not to_journal(stream, {"JOURNAL_STREAM": journal_stream_of(other.fileno())})
        assert not to_journal(stream, {})
        assert not to_journal(stream, {"JOURNAL_STREAM": "not:numbers"})
        assert not to_journal(stream, {"JOURNAL_STREAM": ""})
        assert not to_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # no descriptor
        here = {"JOURNAL_STREAM": journal_stream_of(stream.fileno())}
        assert isinstance(formatter("journal", stream=stream, environ=here), JournalFormatter)
        assert not isinstance(formatter(stream=other, environ=here), JournalFormatter)


def test_syslog_priorities_of_levels() -> None:
    assert [priority(level) for level in (50, 40, 30, 20, 10)] == [2, 3, 4, 6, 7]
    assert priority(25) == 6 and priority(5) == 7


@pytest.fixture
def journal_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter("journal"))
    logger = logging.getLogger("gateway.test-logging")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def test_a_line_break_cannot_forge_a_journal_line(
    journal_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = journal_log
    hostile = "x\n<3>event=forged\r<2>event=forged\r\n<0>event=forged\0<1>event=forged"
    logger.info("event=smtp-session client=%s", hostile)
    # journald ends a line at \n and at NUL; \r is split too (a terminal would go back).
    lines = re.split(r"[\n\0]", out.getvalue().rstrip("\n"))
    assert lines == [
        "<6>journal event=smtp-session client=x",
        "<6>journal   <3>event=forged",
        "<6>journal   <2>event=forged",
        "<6>journal   <0>event=forged",
        "<6>journal   <1>event=forged",
    ]


def refuse(message: str) -> None:
    raise ValueError(message)


def test_a_traceback_is_one_event_at_its_priority(
    journal_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = journal_log
    try:
        refuse("bad\n<6>event=all-is-well")
    except ValueError:
        logger.exception("event=session-failed listener=smtp")
    lines = out.getvalue().rstrip("\n").split("\n")
    assert lines[0] == "<3>journal event=session-failed listener=smtp"
    assert len(lines) > 3
    assert all(line.startswith("<3>journal   ") for line in lines[1:])
    assert "<3>journal   <6>event=all-is-well" in lines
