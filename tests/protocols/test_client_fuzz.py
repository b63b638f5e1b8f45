"""Property tests of the client machines: whatever a server sends, in any state and however
it is split, the machine gives events or raises RemoteProtocolError (nothing else), sends
only what a client may, and holds no more than one read plus less than one reply line."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import event as note_kind
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols import pop3, smtp
from gateway.protocols.smtp._readers import DataReader

from .client_helpers import TLS, Send, Step, drive, whole

Chunks = list[bytes]


def chunked(data: bytes, cuts: list[int]) -> Chunks:
    chunks = []
    for cut in cuts:
        chunks.append(data[:cut])
        data = data[cut:]
    return [*chunks, data, b""]  # the rest, then EOF


def play(
    conn: smtp.ClientConnection | pop3.ClientConnection,
    chunks: Chunks,
    follow: Callable[[], object | None],
    line_limit: int,
) -> list[object]:
    """Feed ``chunks``, read while a reply is due, run handshakes, and send ``follow()``'s
    command whenever none is due. Returns the events; RemoteProtocolError ends the run."""
    remote = (smtp.RemoteProtocolError, pop3.RemoteProtocolError)
    events: list[object] = []
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while conn.reply_due or not chunk:
                event = conn.next_event()
                conn.data_to_send()
                if event is smtp.NEED_DATA or event is pop3.NEED_DATA:
                    assert conn.buffered < line_limit
                    break
                note_kind(type(event).__name__)
                events.append(event)
                if isinstance(event, smtp.ConnectionClosed | pop3.ConnectionClosed):
                    return events
                if isinstance(event, smtp.StartTLS | pop3.StartTLS):
                    conn.tls_started()
                if not conn.reply_due:
                    command = follow()
                    if command is None:
                        break
                    conn.send(command)  # type: ignore[arg-type]
    except remote as exc:
        error = exc
    else:
        return events
    note_kind(f"error: {str(error)[:30]}")
    assert conn.state.name == "CLOSED"  # a remote error ends the session
    return events


# -- SMTP -------------------------------------------------------------------------------------

S_GREETING = b"220 mx\r\n"
S_EHLO = Send(smtp.Hello("EHLO", "gw.test"))
S_EXTENSIONS = b"250-mx\r\n250-STARTTLS\r\n250-AUTH LOGIN\r\n250 CHUNKING\r\n"
SMTP_PREFIXES: dict[str, list[Step]] = {
    "greeting": [],
    "ehlo": [S_GREETING, S_EHLO],
    "starttls": [S_GREETING, S_EHLO, S_EXTENSIONS, Send(smtp.StartTLS())],
    "auth": [TLS, S_GREETING, S_EHLO, S_EXTENSIONS, Send(smtp.Authenticate("LOGIN", "a", "b"))],
    "data": [
        TLS,
        S_GREETING,
        S_EHLO,
        S_EXTENSIONS,
        Send(smtp.MailFrom("a@b.c")),
        b"250 ok\r\n",
        Send(smtp.RcptTo("d@e.f")),
        b"250 ok\r\n",
        Send(smtp.StartData()),
    ],
    "bdat": [
        TLS,
        S_GREETING,
        S_EHLO,
        S_EXTENSIONS,
        Send(smtp.MailFrom("a@b.c")),
        b"250 ok\r\n",
        Send(smtp.RcptTo("d@e.f")),
        b"250 ok\r\n",
        Send(smtp.StartData(chunked=True)),
        Send(smtp.BodyData(b"abc")),
    ],
}
# Whole reply lines most of the time, so sessions get deep; noise the rest.
SMTP_LINES = [
    b"220 go\r\n",
    b"250 ok\r\n",
    b"250-STARTTLS\r\n",
    b"235 2.7.0 ok\r\n",
    b"334 VXNlcm5hbWU6\r\n",
    b"334 \r\n",
    b"354 go\r\n",
    b"421 4.4.2 bye\r\n",
    b"554 no\r\n",
]
SMTP_NOISE = [b"250-", b"5.7.0 ", b"\r\n", b"\n", b"\r", b" ", b"\xff", b"x" * 5000]
smtp_bytes = st.lists(
    st.one_of(
        *[st.sampled_from(SMTP_LINES)] * 4, st.sampled_from(SMTP_NOISE), st.binary(max_size=4)
    ),
    max_size=30,
).map(b"".join)


def smtp_follow(conn: smtp.ClientConnection) -> Callable[[], object | None]:
    """After each reply, the first of these the machine takes (a relay's order)."""
    commands = [smtp.EndOfMessage(b"x"), smtp.Reset(), smtp.Hello("EHLO", "gw.test"), smtp.Quit()]

    def follow() -> object | None:
        for command in commands:
            try:
                conn.send(command)
            except smtp.LocalProtocolError:
                continue
            return None
        return None

    return follow


@settings(max_examples=300)
@given(
    prefix=st.sampled_from(sorted(SMTP_PREFIXES)),
    data=smtp_bytes,
    cuts=st.lists(st.integers(1, 40), max_size=12),
)
def test_smtp_any_reply_bytes_give_events_or_the_remote_error(
    prefix: str, data: bytes, cuts: list[int]
) -> None:
    conn = smtp.ClientConnection()
    drive(conn, whole([*SMTP_PREFIXES[prefix]]))
    events = play(conn, chunked(data, cuts), smtp_follow(conn), smtp.REPLY_LINE_LIMIT)
    for event in events:
        assert isinstance(event, smtp.Reply | smtp.StartTLS | smtp.ConnectionClosed)


# -- POP3 -------------------------------------------------------------------------------------

P_GREETING = b"+OK ready\r\n"
P_CAPA = b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"
P_IN: list[Step] = [TLS, P_GREETING, Send(pop3.Login("a", "b", "USER")), b"+OK\r\n+OK\r\n"]
POP3_PREFIXES: dict[str, list[Step]] = {
    "greeting": [],
    "capa": [P_GREETING, Send(pop3.Capa())],
    "stls": [P_GREETING, Send(pop3.Capa()), P_CAPA, Send(pop3.StartTLS())],
    "user": [TLS, P_GREETING, Send(pop3.Login("a", "b", "USER"))],
    "plain": [TLS, P_GREETING, Send(pop3.Login("a", "p" * 300, "PLAIN"))],
    "retr": [*P_IN, Send(pop3.Retr(1))],
    "uidl": [*P_IN, Send(pop3.FetchUidls(limit=20))],
    "uidl-n": [*P_IN, Send(pop3.FetchUidls(3))],
    "stat": [*P_IN, Send(pop3.Stat())],
}
POP3_LINES = [
    b"+OK\r\n",
    b"+OK 1 2\r\n",
    b"-ERR [IN-USE] no\r\n",
    b"-ERR\r\n",
    b"+ \r\n",
    b".\r\n",
    b"..x\r\n",
    b"1 abc\r\n",
    b"3 uid\r\n",
    b"STLS\r\n",
]
POP3_NOISE = [b"+\r\n", b".", b"\r\n", b"\n", b"\r", b"\xff", b"x" * 600]
pop3_bytes = st.lists(
    st.one_of(
        *[st.sampled_from(POP3_LINES)] * 4, st.sampled_from(POP3_NOISE), st.binary(max_size=4)
    ),
    max_size=30,
).map(b"".join)


def pop3_follow(conn: pop3.ClientConnection) -> Callable[[], object | None]:
    commands = [pop3.Stat(), pop3.FetchUidls(limit=8), pop3.Retr(2), pop3.Capa(), pop3.Quit()]

    def follow() -> object | None:
        while commands:
            command = commands.pop(0)
            try:
                conn.send(command)
            except pop3.LocalProtocolError:
                continue
            return None
        return None

    return follow


@settings(max_examples=300)
@given(
    prefix=st.sampled_from(sorted(POP3_PREFIXES)),
    data=pop3_bytes,
    cuts=st.lists(st.integers(1, 40), max_size=12),
)
def test_pop3_any_response_bytes_give_events_or_the_remote_error(
    prefix: str, data: bytes, cuts: list[int]
) -> None:
    conn = pop3.ClientConnection()
    drive(conn, whole([*POP3_PREFIXES[prefix]]))
    events = play(conn, chunked(data, cuts), pop3_follow(conn), pop3.REPLY_LINE_LIMIT)
    kinds = (
        pop3.Reply,
        pop3.BodyData,
        pop3.BodyEnd,
        pop3.Capabilities,
        pop3.UidlListing,
        pop3.StartTLS,
        pop3.ConnectionClosed,
    )
    for event in events:
        assert isinstance(event, kinds)
        if isinstance(event, pop3.BodyData):
            assert 0 < len(event.data) <= pop3.BODY_PIECE_SIZE
        if isinstance(event, pop3.UidlListing) and not event.complete:
            assert event.uidls == {}


# -- content round trips --------------------------------------------------------------------

lines = st.lists(
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
    | st.sampled_from([b".", b"..", b".x", b""]),
    max_size=20,
)


@settings(max_examples=200)
@given(content_lines=lines, cuts=st.lists(st.integers(1, 40), max_size=12))
def test_pop3_body_round_trips_at_any_split(content_lines: list[bytes], cuts: list[int]) -> None:
    """What a server stuffs comes out of the client exactly, however the bytes arrive."""
    content = b"".join(line + b"\r\n" for line in content_lines)
    stuffer = pop3.DotStuffer()
    wire = b"+OK\r\n" + stuffer.feed(content) + stuffer.end()
    conn = pop3.ClientConnection()
    drive(conn, whole([*P_IN, Send(pop3.Retr(1))]))
    body = bytearray()
    for chunk in filter(None, chunked(wire, cuts)):  # never b"": that is EOF
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not pop3.NEED_DATA:
            if isinstance(event, pop3.BodyData):
                body += event.data
    assert bytes(body) == content
    assert not conn.reply_due


@settings(max_examples=200)
@given(content_lines=lines, cuts=st.lists(st.integers(1, 40), max_size=12))
def test_smtp_data_content_round_trips_through_the_server_reader(
    content_lines: list[bytes], cuts: list[int]
) -> None:
    """Content the client sends as DATA, in any pieces, is what the server machine's DATA
    reader takes from it (the end only at the real end: no smuggling)."""
    content = b"".join(line + b"\r\n" for line in content_lines)
    conn = smtp.ClientConnection()
    drive(conn, whole(SMTP_PREFIXES["data"][:-1]))
    wire = bytearray(conn.send(smtp.StartData()))
    drive(conn, whole([b"354 go\r\n"]))
    pieces = chunked(content, cuts)[:-1]
    for piece in pieces[:-1]:
        wire += conn.send(smtp.BodyData(piece))
    wire += conn.send(smtp.EndOfMessage(pieces[-1]))
    assert wire.startswith(b"DATA\r\n")
    buf = bytearray(wire[6:])
    reader = DataReader(reject_bare_lf=True)
    received = bytearray()
    ended = False
    while not ended:
        data, ended = reader.read(buf)
        received += data
    assert bytes(received) == content
    assert not buf
