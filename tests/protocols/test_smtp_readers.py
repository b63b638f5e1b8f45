"""The readers and writers on their own, fed whole, byte by byte and at every split point."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.smtp import (
    NEED_DATA,
    BodyType,
    CloseReason,
    ConnectionClosed,
    DotStuffer,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    ReplyReader,
    format_bdat,
    format_command,
    format_mail,
    format_rcpt,
    format_reply,
    replies,
)
from gateway.protocols.smtp._readers import TOO_LONG, ChunkReader, DataReader, Line, LineReader


def splits(data: bytes) -> list[list[bytes]]:
    """h11's tr(): whole, byte by byte, and cut at every single point."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    return ways


def read_data(chunks: list[bytes], *, reject: bool = False) -> tuple[bytes, bool, bytes]:
    """Content, whether it ended, and what is left in the buffer afterwards."""
    reader = DataReader(reject_bare_lf=reject)
    buf = bytearray()
    out = bytearray()
    for i, chunk in enumerate(chunks):
        buf += chunk
        while True:
            before = len(buf)
            content, ended = reader.read(buf, limit=5)  # a tiny window exercises the cuts
            out += content
            if ended:
                return bytes(out), True, bytes(buf) + b"".join(chunks[i + 1 :])
            if len(buf) == before:
                break
        assert len(buf) <= 2  # the carry-over stays tiny
    return bytes(out), False, bytes(buf)


DATA_CASES = [
    (b".\r\n", b""),
    (b"a\r\n.\r\n", b"a\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"...x\r\n.\r\n", b"..x\r\n"),
    (b"a\r\n..b\r\n.\r\n", b"a\r\n.b\r\n"),
    (b"a.\r\n.b\r\n.\r\n", b"a.\r\nb\r\n"),
    (b".\r\r\n.\r\n", b"\r\r\n"),  # ".<CR>" has another character: unstuffed
    (b"\r\r\n.\r\n", b"\r\r\n"),
    (b"a\rb\r\n.\r\n", b"a\rb\r\n"),  # bare CR: content
    (b"a\n.\r\n.\r\n", b"a\r\n.\r\n"),  # "." after a bare LF: content, dot kept
    (b"a\r\n.\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),  # "." bare-LF: content
    (b"a\n..b\r\n.\r\n", b"a\r\n.b\r\n"),  # after a bare LF: a line start
    (b"\n.\r\n.\r\n", b"\r\n.\r\n"),  # the "." after LF is content, then the end
    (b"x" * 1005 + b"\r\n.\r\n", b"x" * 1005 + b"\r\n"),  # over 1000 octets: streamed
]


@pytest.mark.parametrize(("wire", "content"), DATA_CASES, ids=lambda v: repr(v[:12]))
def test_data_reader(wire: bytes, content: bytes) -> None:
    for chunks in splits(wire + b"NOOP\r\n"):
        assert read_data(chunks) == (content, True, b"NOOP\r\n")


@pytest.mark.parametrize(
    "wire", [b"a\n.\r\n", b"a\r\n.\n", b"\n", b"abc\r\ndef\nxyz\r\n.\r\n"], ids=repr
)
def test_data_reader_reject_mode(wire: bytes) -> None:
    for chunks in splits(wire):
        with pytest.raises(RemoteProtocolError) as info:
            read_data(chunks, reject=True)
        assert info.value.reply == replies.BARE_NEWLINE


@pytest.mark.parametrize(
    "wire", [b"\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\r\n\x00.\r\n", b".\n"], ids=repr
)
def test_data_reader_never_ends_on_a_fake_terminator(wire: bytes) -> None:
    for chunks in splits(b"x" + wire):
        assert read_data(chunks)[1] is False


def test_data_reader_streams_a_huge_line() -> None:
    reader = DataReader(reject_bare_lf=False)
    buf = bytearray()
    total = 0
    for _ in range(200):
        buf += b"y" * 65536
        content, ended = reader.read(buf)
        total += len(content)
        assert not ended and not buf
    assert total == 200 * 65536


def _normalize(content: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", content)


@given(st.lists(st.binary(max_size=40), max_size=8), st.binary(max_size=20))
def test_dot_stuffer_round_trips_through_the_data_reader(pieces: list[bytes], tail: bytes) -> None:
    stuffer = DotStuffer()
    wire = b"".join(stuffer.feed(p) for p in pieces) + stuffer.end()
    content = _normalize(b"".join(pieces))
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    assert read_data([wire + tail]) == (content, True, tail)
    assert read_data([wire[i : i + 1] for i in range(len(wire))] + [tail]) == (
        content,
        True,
        tail,
    )


def test_line_reader() -> None:
    reader = LineReader(16)
    buf = bytearray(b"NOOP\r\nRSET\nx" + b"y" * 20 + b"\r\nQUIT\r\n")
    assert reader.read(buf) == Line(b"NOOP", bare_lf=False)
    assert reader.read(buf) == Line(b"RSET", bare_lf=True)
    assert reader.read(buf) is TOO_LONG
    assert reader.read(buf) == Line(b"QUIT", bare_lf=False)
    assert reader.read(buf) is None
    # A line of exactly the limit, CRLF included, is fine; one more octet is not.
    assert LineReader(6).read(bytearray(b"NOOP\r\n")) == Line(b"NOOP", bare_lf=False)
    assert LineReader(6).read(bytearray(b"NOOPS\r\n")) is TOO_LONG


def test_line_reader_skips_a_long_line_without_buffering_it() -> None:
    reader = LineReader(16)
    buf = bytearray(b"z" * 100)
    assert reader.read(buf) is TOO_LONG
    assert not buf
    for _ in range(10):
        buf += b"z" * 100
        assert reader.read(buf) is None
        assert not buf
    buf += b"z\r\nNOOP\r\n"
    assert reader.read(buf) == Line(b"NOOP", bare_lf=False)


def test_chunk_reader() -> None:
    reader = ChunkReader(5)
    buf = bytearray(b"abc")
    assert reader.read(buf) == b"abc"
    buf += b"defg"
    assert reader.read(buf) == b"de"
    assert reader.remaining == 0
    assert buf == b"fg"


# -- the client role ---------------------------------------------------------------------------


def read_replies(chunks: list[bytes]) -> list[Reply | ConnectionClosed]:
    reader = ReplyReader()
    out: list[Reply | ConnectionClosed] = []
    for chunk in [*chunks, b""]:
        reader.receive_data(chunk)
        while (event := reader.next_event()) is not NEED_DATA:
            assert not isinstance(event, type(NEED_DATA))
            out.append(event)
            if isinstance(event, ConnectionClosed):
                return out
    return out


def test_reply_reader() -> None:
    wire = (
        b"220 mx.example ESMTP\r\n"
        b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        b"550-5.1.1 No such\r\n550 5.1.1 user\r\n"
        b"354 go ahead\r\n"
        b"250\r\n"
        b"421 4.7.0\n"  # a bare LF, as some servers send
        b"250 5.0.0 not an enhanced code of class 2\r\n"
    )
    expected = [
        Reply(220, None, ("mx.example ESMTP",)),
        Reply(250, None, ("mx.example", "PIPELINING", "SIZE 10")),
        Reply(550, "5.1.1", ("No such", "user")),
        Reply(354, None, ("go ahead",)),
        Reply(250, None, ("",)),
        Reply(421, "4.7.0", ("",)),
        Reply(250, None, ("5.0.0 not an enhanced code of class 2",)),
        ConnectionClosed(CloseReason.EOF),
    ]
    for chunks in splits(wire):
        assert read_replies(chunks) == expected


@pytest.mark.parametrize(
    "wire",
    [
        b"25\r\n",
        b"2500 x\r\n",
        b"600 x\r\n",
        b"250_x\r\n",
        b"250-a\r\n251 b\r\n",
        b"250 a\rb\r\n",
        b"250-unfinished\r\n",
        b"250 no line end",
        b"250 " + b"x" * 5000 + b"\r\n",
        b"250-x\r\n" * 100 + b"250 x\r\n",
    ],
    ids=lambda w: repr(w[:20]),
)
def test_reply_reader_refuses(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        read_replies([wire])


def test_reply_reader_discards_injected_bytes_after_starttls() -> None:
    reader = ReplyReader()
    reader.receive_data(b"220 2.0.0 Ready\r\n250 injected\r\n")
    assert reader.next_event() == Reply(220, "2.0.0", ("Ready",))
    assert reader.discard_buffered() == len(b"250 injected\r\n")
    assert reader.next_event() is NEED_DATA


def test_reply_reader_after_eof() -> None:
    reader = ReplyReader()
    reader.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"x")


def test_format_reply_round_trips() -> None:
    for reply in [replies.OK, replies.ehlo("h", ("A", "B")), Reply(550, "5.1.1", ("a", "", "c"))]:
        assert read_replies([format_reply(reply)])[0] == reply
    assert format_reply(Reply(550, "5.1.1", ("a", "b"))) == b"550-5.1.1 a\r\n550 5.1.1 b\r\n"
    assert format_reply(Reply(250, None, ("",))) == b"250\r\n"


def test_command_writers() -> None:
    assert format_command("NOOP") == b"NOOP\r\n"
    assert format_mail("a@b.c", size=5, body=BodyType.EIGHT_BIT_MIME, smtputf8=True) == (
        b"MAIL FROM:<a@b.c> SIZE=5 BODY=8BITMIME SMTPUTF8\r\n"
    )
    assert format_rcpt("x@y.z") == b"RCPT TO:<x@y.z>\r\n"
    assert format_bdat(10) == b"BDAT 10\r\n"
    assert format_bdat(0, last=True) == b"BDAT 0 LAST\r\n"
    with pytest.raises(ValueError, match="line break"):
        format_rcpt("x@y.z>\r\nDATA")


def test_dot_stuffer() -> None:
    stuffer = DotStuffer()
    assert stuffer.feed(b".a\r") + stuffer.feed(b"\n.b\nc") + stuffer.end() == (
        b"..a\r\n..b\r\nc\r\n.\r\n"
    )
    assert DotStuffer().end() == b".\r\n"
