"""Test helpers for the client machines (SMTP and POP3), as ``helpers.py`` is for the server.

A script is what happens on one connection, in order: :class:`Send` (the driver sends a
command), the server's bytes, and the :data:`TLS` and :data:`EOF` marks. :func:`drive` plays
the driver: it sends, feeds, and reads events while a reply is due (h11's
``examples/trio-client``), writing down every event and every byte the client sent.
:func:`run_all_ways` runs a script with the server's bytes whole, one byte at a time, at
random splits, and all at once ahead of the commands (so each reply arrives with the bytes
that follow it, h11's ``tr()``), and checks all of them agree.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest

from gateway.protocols import pop3, smtp


class Machine(Protocol):
    @property
    def reply_due(self) -> bool: ...
    def send(self, command: Any) -> bytes: ...
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> object: ...
    def data_to_send(self) -> bytes: ...
    def tls_started(self) -> None: ...


class Mark(enum.Enum):
    TLS = "TLS"  # the driver finished the TLS handshake here
    EOF = "EOF"  # the server closed its side here


TLS = Mark.TLS
EOF = Mark.EOF


@dataclass(frozen=True)
class Send:
    command: object


Step = Send | bytes | Mark
Script = Sequence[Step]
NEED_DATA = (smtp.NEED_DATA, pop3.NEED_DATA)


@dataclass
class Transcript:
    events: list[object] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)  # every byte the client sent
    max_buffered: int = 0  # the largest buffer left when the machine needed data

    @property
    def merged(self) -> list[object]:
        """Events with runs of body pieces joined: how a body is cut depends on how the
        input was split; nothing else may."""
        merged: list[object] = []
        for event in self.events:
            if isinstance(event, pop3.BodyData) and merged:
                last = merged[-1]
                if isinstance(last, pop3.BodyData):
                    merged[-1] = pop3.BodyData(last.data + event.data)
                    continue
            merged.append(event)
        return merged

    @property
    def body(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, pop3.BodyData))


def drive(conn: Machine, steps: Iterator[Step]) -> Transcript:
    transcript = Transcript()

    def pump(*, eof: bool = False) -> None:
        while conn.reply_due or eof:
            event = conn.next_event()
            transcript.output += conn.data_to_send()
            if event in NEED_DATA:
                buffered = getattr(conn, "buffered", 0)
                transcript.max_buffered = max(transcript.max_buffered, buffered)
                return
            transcript.events.append(event)
            if isinstance(event, smtp.ConnectionClosed | pop3.ConnectionClosed):
                return

    for step in steps:
        if isinstance(step, Send):
            transcript.output += conn.send(step.command)
            pump()
        elif step is TLS:
            conn.tls_started()
            pump()
        elif step is EOF:
            conn.receive_data(b"")
            pump(eof=True)
        else:
            assert isinstance(step, bytes)
            if step:  # b"" would mean EOF: the mark says that
                conn.receive_data(step)
            pump()
    return transcript


def whole(script: Script) -> Iterator[Step]:
    yield from script


def bytewise(script: Script) -> Iterator[Step]:
    for step in script:
        if isinstance(step, bytes):
            yield from (step[i : i + 1] for i in range(len(step)))
        else:
            yield step


def randomly(script: Script, seed: int) -> Iterator[Step]:
    rng = random.Random(seed)
    for step in script:
        if not isinstance(step, bytes):
            yield step
            continue
        i = 0
        while i < len(step):
            size = rng.choice((1, 2, 3, 7, 64, 1000, 70000))
            yield step[i : i + size]
            i += size


def ahead(script: Script) -> Iterator[Step]:
    """Each stretch between marks with all its server bytes first: every reply arrives
    together with the replies that follow it (trailing bytes)."""
    stretch: list[Step] = []
    for step in [*script, None]:
        if step is None or isinstance(step, Mark):
            data = b"".join(s for s in stretch if isinstance(s, bytes))
            yield data
            yield from (s for s in stretch if not isinstance(s, bytes))
            stretch = []
            if step is not None:
                yield step
        else:
            stretch.append(step)


def run_all_ways(
    make: Callable[[], Machine], script: Script, *, trailing: bool = True
) -> Transcript:
    """Run ``script`` whole, byte by byte, at three random splits and (unless
    ``trailing`` is False) with the server's bytes ahead; assert the same events and output,
    return the whole run."""
    first = drive(make(), whole(script))
    ways = [bytewise(script), *(randomly(script, seed) for seed in range(3))]
    if trailing:
        ways.append(ahead(script))
    for way in ways:
        other = drive(make(), way)
        assert other.merged == first.merged
        assert other.output == first.output
    return first


def raises_all_ways(
    make: Callable[[], Machine], script: Script, error: type[Exception], match: str
) -> list[Exception]:
    """Every way of running ``script`` raises ``error`` with ``match`` in its message."""
    errors: list[Exception] = []
    for way in (whole(script), bytewise(script), randomly(script, 1)):
        with pytest.raises(error, match=re.escape(match)) as info:
            drive(make(), way)
        errors.append(info.value)
    return errors
