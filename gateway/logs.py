"""How log lines look: for a terminal or a file, or for systemd's journal (SPEC.md 12.1).

Every process logs one line per event on standard error. Under systemd, standard error is a
stream into the journal, which stamps each line itself and reads a leading ``<N>`` as the
line's syslog priority (systemd.exec(5), ``SyslogLevelPrefix=``; sd-daemon(3), ``SD_ERR``
and so on): there a line is ``<6>event=...`` (a child: ``<6>journal event=...``), without a
timestamp of our own. Elsewhere it is ``2025-01-02 03:04:05,678 INFO event=...``.

The journal splits a stream into entries at every newline (and NUL), and parses a priority
at the start of each. A message with a line break in it (a traceback, or text a client
chose) would otherwise let its second line begin with a prefix of anybody's choosing: each
continuation line gets the record's own prefix and an indent, so it is read as part of the
same event, at the same priority.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

__all__ = ["JournalFormatter", "configure", "formatter", "name_lines", "to_journal"]

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"

# sd-daemon(3): SD_CRIT <2>, SD_ERR <3>, SD_WARNING <4>, SD_INFO <6>, SD_DEBUG <7>.
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_DEBUG_PRIORITY = 7
# Where journald's stream reader ends a line, and \r, which takes a terminal back to the
# start of the line (and could hide what came before it).
_LINE_BREAK = re.compile(r"\r\n|[\n\r\0]")
CONTINUATION_INDENT = "  "


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (between two levels: the lower one's)."""
    for level, value in _PRIORITIES:
        if levelno >= level:
            return value
    return _DEBUG_PRIORITY


class JournalFormatter(logging.Formatter):
    """``<priority>[name ]message``, one prefixed line per line of the message."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__("%(message)s")
        self.prefix = f"{name} " if name else ""

    def format(self, record: logging.LogRecord) -> str:
        head = f"<{priority(record.levelno)}>{self.prefix}"
        first, *rest = _LINE_BREAK.split(super().format(record))
        return "\n".join([head + first, *(head + CONTINUATION_INDENT + line for line in rest)])


def to_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is systemd's journal: ``JOURNAL_STREAM`` names its device and
    inode (systemd.exec(5): a process whose standard error was redirected elsewhere keeps
    the variable, so it is compared, not just looked for)."""
    environ = os.environ if environ is None else environ
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (status.st_dev, status.st_ino)
    except (ValueError, OSError, AttributeError):  # unset, malformed, or not a real file
        return False


def formatter(
    name: str | None = None, *, stream: TextIO, environ: Mapping[str, str] | None = None
) -> logging.Formatter:
    """The formatter for lines written to ``stream`` by the process called ``name`` (None:
    the gateway itself, or its supervisor)."""
    if to_journal(stream, environ):
        return JournalFormatter(name)
    return logging.Formatter(
        f"%(asctime)s %(levelname)s {name} %(message)s" if name else PLAIN_FORMAT
    )


def configure(stream: TextIO | None = None) -> None:
    """Log INFO and above to ``stream`` (standard error), unless logging is set up already
    (as :func:`logging.basicConfig`)."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(stream=stream))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def name_lines(name: str) -> None:
    """In a child of the supervisor: prefix every line with its name (``journal``,
    ``worker-N``), whose line it is in the shared log."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None) or sys.stderr
        handler.setFormatter(formatter(name, stream=stream))
