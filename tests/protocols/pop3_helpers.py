"""Test helpers for the POP3 machine, as ``helpers.py`` is for SMTP.

:func:`drive` plays the driver over a small fake mailbox; :func:`run_all_ways` runs a
script whole, byte by byte and at random splits and checks all of them agree.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from gateway.protocols.pop3 import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Dele,
    Event,
    List,
    Login,
    Noop,
    POP3Settings,
    Quit,
    Reply,
    Retr,
    Rset,
    ServerConnection,
    StartTLS,
    Stat,
    Top,
    Uidl,
)


class Mark(enum.Enum):
    TLS = "TLS"
    EOF = "EOF"


TLS = Mark.TLS
EOF = Mark.EOF
Script = Sequence[bytes | Mark]

MESSAGES = {
    1: b"Subject: one\r\n\r\nhello\r\n.dot line\r\n",
    2: b"Subject: two\r\nX: y\r\n\r\nbody\r\n..two\r\nlast",
}


@dataclass(frozen=True)
class Answer:
    reply: Reply
    lines: list[str] | None = None  # send_lines
    body: bytes | None = None  # streamed in chunks of 5 octets


Policy = Callable[[Event], Answer]


def mailbox_policy(event: Event) -> Answer:
    """A two-message mailbox; the password is "secret"."""
    if isinstance(event, Login):
        if event.password == "secret":
            return Answer(Reply(True, "logged in"))
        return Answer(Reply(False, "invalid credentials", "AUTH"))
    if isinstance(event, Stat):
        return Answer(Reply(True, f"2 {sum(map(len, MESSAGES.values()))}"))
    if isinstance(event, List | Uidl):
        value = (lambda n: len(MESSAGES[n])) if isinstance(event, List) else (lambda n: f"u{n}")
        if event.msg is None:
            return Answer(Reply(True), lines=[f"{n} {value(n)}" for n in MESSAGES])
        if event.msg in MESSAGES:
            return Answer(Reply(True, f"{event.msg} {value(event.msg)}"))
        return Answer(Reply(False, "no such message"))
    if isinstance(event, Retr | Top):
        if event.msg not in MESSAGES:
            return Answer(Reply(False, "no such message"))
        content = MESSAGES[event.msg]
        if isinstance(event, Top):
            head, _, body = content.partition(b"\r\n\r\n")
            lines = body.split(b"\r\n")[: event.lines]
            content = head + b"\r\n\r\n" + b"".join(line + b"\r\n" for line in lines)
        return Answer(Reply(True, "message follows"), body=content)
    if isinstance(event, Dele | Rset | Noop | Quit):
        return Answer(Reply(True))
    raise AssertionError(event)


@dataclass
class Transcript:
    events: list[Event] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    max_buffered: int = 0

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events]

    @property
    def closed(self) -> ConnectionClosed | None:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, ConnectionClosed) else None


def settings(**overrides: object) -> POP3Settings:
    values: dict[str, object] = {
        "hostname": "pop.test",
        "tls_active": False,
        "stls_offered": True,
    }
    values.update(overrides)
    return POP3Settings(**values)  # type: ignore[arg-type]


def answer(conn: ServerConnection, a: Answer) -> bytes:
    if a.lines is not None:
        return conn.send_lines(a.reply, a.lines)
    if a.body is not None:
        out = conn.send_stream_start(a.reply)
        for i in range(0, len(a.body), 5):
            out += conn.send_stream_data(a.body[i : i + 5])
        return out + conn.send_stream_end()
    return conn.send(a.reply)


def drive(
    conn: ServerConnection, script: Iterable[bytes | Mark], policy: Policy = mailbox_policy
) -> Transcript:
    transcript = Transcript()
    out = transcript.output
    out += conn.greeting()
    decision: Event | None = None

    def pump() -> None:
        nonlocal decision
        while True:
            event = conn.next_event()
            out.extend(conn.data_to_send())
            if event is NEED_DATA:
                buffered = conn.statistics().buffered
                transcript.max_buffered = max(transcript.max_buffered, buffered)
                return
            if event is PAUSED:
                if isinstance(decision, StartTLS):
                    return
                assert decision is not None
                out.extend(answer(conn, policy(decision)))
                decision = None
                continue
            assert isinstance(event, Event)
            transcript.events.append(event)
            decision = event
            if isinstance(event, ConnectionClosed):
                return

    for item in script:
        if transcript.closed:
            break
        if item is TLS:
            conn.tls_started()
        elif item is EOF:
            conn.receive_data(b"")
        elif item:
            assert isinstance(item, bytes)
            conn.receive_data(item)
        pump()
    return transcript


def split_bytes(script: Script) -> Iterator[bytes | Mark]:
    for item in script:
        if isinstance(item, Mark):
            yield item
        else:
            for i in range(len(item)):
                yield item[i : i + 1]


def split_random(script: Script, seed: int) -> Iterator[bytes | Mark]:
    rng = random.Random(seed)
    for item in script:
        if isinstance(item, Mark):
            yield item
            continue
        i = 0
        while i < len(item):
            step = rng.choice((1, 2, 3, 7, 64, 1000))
            yield item[i : i + step]
            i += step


def run_all_ways(
    script: Script, config: POP3Settings | None = None, policy: Policy = mailbox_policy
) -> Transcript:
    """Run ``script`` whole, byte by byte and at three random splittings; assert the same
    events and output, return the whole run."""
    config = config or settings()
    whole = drive(ServerConnection(config), iter(script), policy)
    ways = [split_random(script, seed) for seed in range(3)]
    ways.append(split_bytes(script))
    for way in ways:
        other = drive(ServerConnection(config), way, policy)
        assert other.events == whole.events
        assert other.output == whole.output
    return whole
