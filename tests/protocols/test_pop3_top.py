"""TopCutter against a plain reference on whole messages, under every way of splitting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.pop3 import TopCutter


def reference(message: bytes, lines: int) -> bytes:
    parts = message.split(b"\n")
    out: list[bytes] = []
    in_header = True
    body = 0
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if last:
            out.append(part)  # no newline after it: the message's unterminated end
            break
        out.append(part + b"\n")
        if in_header:
            if part in (b"", b"\r"):
                in_header = False
                if lines == 0:
                    break
        else:
            body += 1
            if body >= lines:
                break
    return b"".join(out)


def cut(pieces: list[bytes], lines: int) -> bytes:
    cutter = TopCutter(lines)
    return b"".join(cutter.feed(piece) for piece in pieces)


def test_examples() -> None:
    message = b"Subject: a\r\nFrom: b\r\n\r\none\r\ntwo\r\n.three\r\n"
    assert cut([message], 0) == b"Subject: a\r\nFrom: b\r\n\r\n"
    assert cut([message], 2) == b"Subject: a\r\nFrom: b\r\n\r\none\r\ntwo\r\n"
    assert cut([message], 99) == message
    assert cut([b"\r\nbody\r\nmore\r\n"], 1) == b"\r\nbody\r\n"  # empty header
    assert cut([b"Subject: only a header\r\n"], 0) == b"Subject: only a header\r\n"
    pieces = [b"Subject: a\r", b"\n\r", b"\nbo", b"dy\r\nx\r\n"]
    assert cut(pieces, 1) == b"Subject: a\r\n\r\nbody\r\n"


@given(
    st.lists(
        st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"x: y", b"."]), min_size=0, max_size=40
    ),
    st.integers(min_value=0, max_value=6),
    st.lists(st.integers(min_value=0, max_value=60), max_size=8),
)
def test_any_split_matches_the_reference(atoms: list[bytes], lines: int, cuts: list[int]) -> None:
    message = b"".join(atoms)
    points = sorted({min(c, len(message)) for c in cuts})
    pieces = [message[a:b] for a, b in zip([0, *points], [*points, len(message)], strict=True)]
    assert cut(pieces, lines) == reference(message, lines)
