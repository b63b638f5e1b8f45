"""The client-role reply reader, the dot-stuffer and the command writers."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.pop3 import (
    NEED_DATA,
    BodyData,
    BodyEnd,
    CloseReason,
    ConnectionClosed,
    Continuation,
    DotStuffer,
    Event,
    RemoteProtocolError,
    Reply,
    ReplyReader,
    auth_plain_response,
    format_command,
    format_reply,
    parse_status_line,
)


def read_all(reader: ReplyReader, pieces: list[bytes]) -> list[Event | Reply]:
    """Feed pieces one at a time, merging BodyData runs."""
    out: list[Event | Reply] = []
    for piece in pieces:
        reader.receive_data(piece)
        while (event := reader.next_event()) is not NEED_DATA:
            assert not isinstance(event, ConnectionClosed) or not piece
            if isinstance(event, BodyData) and out and isinstance(out[-1], BodyData):
                out[-1] = BodyData(out[-1].data + event.data)
            else:
                out.append(event)
            if isinstance(event, ConnectionClosed):
                break
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"+OK", Reply(True)),
        (b"+OK 2 320", Reply(True, "2 320")),
        (b"-ERR [IN-USE] locked", Reply(False, "locked", "IN-USE")),
        (b"-ERR [SYS/TEMP] later", Reply(False, "later", "SYS/TEMP")),
        (b"-ERR [not a code] x", Reply(False, "[not a code] x")),
        (b"+ ", Continuation("")),
        (b"+ abc=", Continuation("abc=")),
    ],
)
def test_parse_status_line(line: bytes, reply: Reply | Continuation) -> None:
    assert parse_status_line(line) == reply


@pytest.mark.parametrize("line", [b"OK", b"+OKAY", b"-ERROR", b"\xff", b"+OK a\x00b"])
def test_parse_status_line_refuses(line: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_status_line(line)


def test_reader_pipelined_session() -> None:
    data = (
        b"+OK ready\r\n+OK Capability list follows\r\nTOP\r\n.\r\n"
        b"-ERR [AUTH] no\r\n+ \r\n+OK in\r\n+OK message\r\n..x\r\n.y\r\n\r\n.\r\n+OK bye\r\n"
    )
    for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = ReplyReader()
        for multiline in (False, True, True, False, True, False):
            reader.expect(multiline)
        assert read_all(reader, [*pieces, b""]) == [
            Reply(True, "ready"),
            Reply(True, "Capability list follows"),
            BodyData(b"TOP\r\n"),
            BodyEnd(),
            Reply(False, "no", "AUTH"),  # a multi-line -ERR has no body
            Continuation(""),
            Reply(True, "in"),
            Reply(True, "message"),
            BodyData(b".x\r\ny\r\n\r\n"),
            BodyEnd(),
            Reply(True, "bye"),
            ConnectionClosed(CloseReason.EOF),
        ]
        assert reader.buffered == 0


def test_reader_errors() -> None:
    reader = ReplyReader()
    reader.receive_data(b"+OK " + b"x" * 600)
    with pytest.raises(RemoteProtocolError):
        reader.next_event()
    reader = ReplyReader()
    reader.expect(multiline=True)
    reader.receive_data(b"+OK\r\nabc\r\n")
    reader.receive_data(b"")
    assert reader.next_event() == Reply(True)
    assert reader.next_event() == BodyData(b"abc\r\n")
    with pytest.raises(RemoteProtocolError):
        reader.next_event()


def test_reader_body_pieces_are_bounded() -> None:
    reader = ReplyReader()
    reader.expect(multiline=True)
    reader.receive_data(b"+OK\r\n" + b"a" * 200_000 + b"\r\n.\r\n")
    events = []
    while (event := reader.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, BodyEnd):
            break
    assert all(len(e.data) <= 65536 for e in events if isinstance(e, BodyData))
    assert b"".join(e.data for e in events if isinstance(e, BodyData)) == b"a" * 200_000 + b"\r\n"


def test_reader_hands_over_whole_buffers() -> None:
    """A body piece is everything buffered up to the next line that starts with "." (a
    proxy relays and stores one piece per receive, not one per line)."""
    reader = ReplyReader()
    reader.expect(multiline=True)
    reader.receive_data(b"+OK\r\n" + b"line\r\n" * 100 + b"..dot\r\nmore\r\npart")
    assert reader.next_event() == Reply(True)
    assert reader.next_event() == BodyData(b"line\r\n" * 100)
    assert reader.next_event() == BodyData(b".dot\r\nmore\r\npart")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\r\n.\r\n")
    assert reader.next_event() == BodyData(b"\r\n")
    assert reader.next_event() == BodyEnd()


@pytest.mark.parametrize(
    ("chunks", "wire"),
    [
        ([], b".\r\n"),
        ([b""], b".\r\n"),
        ([b".\r\n"], b"..\r\n.\r\n"),
        ([b"a\r\n.", b"b"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\r", b"\n.b\n"], b"a\r\n..b\r\n.\r\n"),
        ([b"a\n.\nb"], b"a\r\n..\r\nb\r\n.\r\n"),  # bare LF becomes CRLF
        ([b"a\r"], b"a\r\r\n.\r\n"),
        ([b"x\r", b".y"], b"x\r.y\r\n.\r\n"),  # a bare CR is no line end
    ],
)
def test_dot_stuffer(chunks: list[bytes], wire: bytes) -> None:
    stuffer = DotStuffer()
    assert b"".join(stuffer.feed(c) for c in chunks) + stuffer.end() == wire
    with pytest.raises(ValueError, match="ended"):
        stuffer.feed(b"x")


def expected_body(content: bytes) -> bytes:
    """What a client reads back: bare LFs as CRLF, CRLF added if the last line lacks one."""
    normal = content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if normal and not normal.endswith(b"\n"):
        normal += b"\r\n"
    return normal


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=300) | st.lists(st.sampled_from([b".", b"\r", b"\n", b"a"])).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    st.lists(st.integers(min_value=0, max_value=800), max_size=8),
)
def test_stuffing_round_trip(content: bytes, in_cuts: list[int], out_cuts: list[int]) -> None:
    stuffer = DotStuffer()
    wire = b"+OK\r\n" + b"".join(stuffer.feed(c) for c in cut(content, in_cuts))
    wire += stuffer.end() + b"+OK next\r\n"
    reader = ReplyReader()
    reader.expect(multiline=True)
    events = read_all(reader, cut(wire, out_cuts))
    body = [e for e in events if isinstance(e, BodyData)]
    assert events[0] == Reply(True)
    assert events[-2:] == [BodyEnd(), Reply(True, "next")]
    assert (body[0].data if body else b"") == expected_body(content)


def test_format_reply() -> None:
    assert format_reply(Reply(True)) == b"+OK\r\n"
    assert format_reply(Reply(False, "locked", "IN-USE")) == b"-ERR [IN-USE] locked\r\n"
    with pytest.raises(ValueError, match="CR"):
        Reply(True, "a\r\nb")
    with pytest.raises(ValueError, match="response code"):
        Reply(False, "x", "A]B")
    with pytest.raises(ValueError, match="512"):
        Reply(True, "x" * 510)


def test_format_command_and_auth_plain() -> None:
    assert format_command("retr", "1") == b"RETR 1\r\n"
    assert format_command("PASS", "pass word") == b"PASS pass word\r\n"
    assert format_command("CAPA") == b"CAPA\r\n"
    for verb, args in (("RETR", ("1\r\nDELE 1",)), ("USER", ("a b",)), ("X", ()), ("USER", ("",))):
        with pytest.raises(ValueError, match=r"\w"):
            format_command(verb, *args)
    with pytest.raises(ValueError, match="255"):
        format_command("USER", "u" * 250)
    response = auth_plain_response("bob", "secret")
    assert base64.b64decode(response) == b"\0bob\0secret"
    assert format_command("AUTH", "PLAIN", response) == b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"
