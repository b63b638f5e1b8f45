"""Test helpers for the SMTP machine (h11's ``tests/helpers.py`` and ``tr()`` ideas).

:func:`drive` plays the driver: it feeds a script to a :class:`ServerConnection`, answers
every decision with a policy, runs ``tls_started()`` at :data:`TLS` marks and collects the
events and every byte the machine wants written. :func:`run_all_ways` does that with the
input whole, one byte at a time and at random splits, and checks all of them agree, so
every scenario is also a test of the readers' carry-over state.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from gateway.protocols.smtp import (
    NEED_DATA,
    PAUSED,
    Authenticate,
    BodyData,
    ConnectionClosed,
    Event,
    MailFrom,
    MessageComplete,
    RcptTo,
    Reply,
    ReplyReader,
    ServerConnection,
    SMTPSettings,
    StartTLS,
    replies,
)


class Mark(enum.Enum):
    TLS = "TLS"  # the driver finished the TLS handshake here
    EOF = "EOF"  # the client closed its side here


TLS = Mark.TLS
EOF = Mark.EOF
Script = Sequence[bytes | Mark]
Policy = Callable[[Event], Reply]


def accept_all(event: Event) -> Reply:
    if isinstance(event, MailFrom):
        return replies.SENDER_OK
    if isinstance(event, RcptTo):
        return replies.RECIPIENT_OK
    if isinstance(event, Authenticate):
        return replies.AUTH_OK
    assert isinstance(event, MessageComplete)
    return replies.message_accepted("q1")


def settings(**overrides: object) -> SMTPSettings:
    values: dict[str, object] = {"hostname": "mx.test", "starttls_offered": True}
    values.update(overrides)
    return SMTPSettings(**values)  # type: ignore[arg-type]


@dataclass
class Transcript:
    events: list[Event] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    max_buffered: int = 0  # the largest receive buffer seen when the machine needed data

    @property
    def merged(self) -> list[Event]:
        """The events with runs of BodyData joined: how content is cut into pieces depends
        on how the input was split; nothing else may."""
        merged: list[Event] = []
        for event in self.events:
            if isinstance(event, BodyData) and merged and isinstance(merged[-1], BodyData):
                merged[-1] = BodyData(merged[-1].data + event.data)
            else:
                merged.append(event)
        return merged

    @property
    def replies(self) -> list[Reply]:
        return parse_replies(bytes(self.output))

    @property
    def codes(self) -> list[int]:
        return [reply.code for reply in self.replies]

    @property
    def body(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, BodyData))

    def kinds(self) -> list[str]:
        return [type(event).__name__ for event in self.merged]


def parse_replies(data: bytes) -> list[Reply]:
    reader = ReplyReader()
    reader.receive_data(data)
    out: list[Reply] = []
    while isinstance(reply := reader.next_event(), Reply):
        out.append(reply)
    assert reader.buffered == 0, "the output ends inside a reply"
    return out


def drive(
    conn: ServerConnection, script: Iterable[bytes | Mark], policy: Policy = accept_all
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
                    return  # until the TLS mark
                assert decision is not None
                out.extend(conn.send(policy(decision)))
                decision = None
                continue
            transcript.events.append(event)
            decision = event
            if isinstance(event, ConnectionClosed):
                return

    for item in script:
        if transcript.events and isinstance(transcript.events[-1], ConnectionClosed):
            break
        if item is TLS:
            conn.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256")
        elif item is EOF:
            conn.receive_data(b"")
        elif item:  # b"" would mean EOF to the machine; the EOF mark says that
            assert isinstance(item, bytes)
            conn.receive_data(item)
        pump()
    return transcript


def split_whole(script: Script) -> Iterator[bytes | Mark]:
    yield from script


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
            step = rng.choice((1, 2, 3, 7, 64, 1000, 70000))
            yield item[i : i + step]
            i += step


def run_all_ways(
    script: Script,
    config: SMTPSettings | None = None,
    policy: Policy = accept_all,
    *,
    bytewise: bool = True,
) -> Transcript:
    """Run ``script`` whole, byte by byte (unless ``bytewise`` is False, for big inputs) and
    at three random splittings; assert the same events and output, return the whole run."""
    config = config or settings()
    whole = drive(ServerConnection(config), split_whole(script), policy)
    ways = [split_random(script, seed) for seed in range(3)]
    if bytewise:
        ways.append(split_bytes(script))
    for way in ways:
        other = drive(ServerConnection(config), way, policy)
        assert other.merged == whole.merged
        assert other.output == whole.output
    return whole
