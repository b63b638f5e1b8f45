"""Arbitrary bytes in any state: events and replies or ConnectionClosed, never another
exception, bounded buffers, and the same result however the input is split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.pop3 import ConnectionClosed, Event, ServerConnection

from .pop3_helpers import EOF, TLS, Mark, drive, run_all_ways
from .pop3_helpers import settings as pop3_settings

# Prefixes that put the session in each state before the fuzzed bytes.
PREFIXES: list[list[bytes | Mark]] = [
    [],  # AUTHORIZATION in the clear
    [b"STLS\r\n", TLS],  # AUTHORIZATION under TLS
    [b"STLS\r\n", TLS, b"USER a\r\nPASS secret\r\n"],  # TRANSACTION
    [b"STLS\r\n", TLS, b"AUTH PLAIN\r\n"],  # waiting for the PLAIN response
]

WORDS = st.sampled_from(
    [b"USER a", b"PASS secret", b"AUTH PLAIN", b"AUTH PLAIN AGEAc2VjcmV0", b"STAT", b"LIST",
     b"LIST 1", b"UIDL", b"RETR 1", b"RETR 2", b"TOP 1 0", b"DELE 1", b"RSET", b"NOOP",
     b"CAPA", b"STLS", b"QUIT", b"*", b"", b".", b"RETR 99999999999", b"x" * 300]
)  # fmt: skip
LINES = st.lists(
    st.tuples(WORDS, st.sampled_from([b"\r\n", b"\n", b"\r", b" ", b""])).map(b"".join),
    max_size=12,
).map(b"".join)
FUZZ = st.binary(max_size=600) | LINES


def check(transcript_events: list[Event]) -> None:
    closed = [i for i, e in enumerate(transcript_events) if isinstance(e, ConnectionClosed)]
    assert closed in ([], [len(transcript_events) - 1])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(PREFIXES))), FUZZ, st.booleans())
def test_fuzz_any_state(prefix: int, data: bytes, eof: bool) -> None:
    script: list[bytes | Mark] = [*PREFIXES[prefix], data]
    if eof:
        script.append(EOF)
    transcript = run_all_ways(script)
    check(transcript.events)
    assert transcript.max_buffered < 255 + 1000  # one read plus less than one line
    if eof:
        assert transcript.closed is not None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=5000), max_size=5))
def test_fuzz_big_reads_keep_buffers_bounded(reads: list[bytes]) -> None:
    conn = ServerConnection(pop3_settings(tls_active=True))
    transcript = drive(conn, [b"USER a\r\nPASS secret\r\n", *reads, EOF])
    check(transcript.events)
    assert transcript.max_buffered < 255
    assert transcript.closed is not None
