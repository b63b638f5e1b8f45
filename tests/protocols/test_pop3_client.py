"""The POP3 client machine (the recording proxy's upstream side), byte by byte: every script
runs whole, one byte at a time, at random splits and with the responses ahead of the
commands (client_helpers.run_all_ways)."""

from __future__ import annotations

import pytest

from gateway.protocols.pop3 import (
    BODY_PIECE_SIZE,
    CAPA_SIZE_LIMIT,
    COMMAND_LINE_LIMIT,
    BodyData,
    BodyEnd,
    Capa,
    Capabilities,
    ClientConnection,
    ClientState,
    CloseReason,
    ConnectionClosed,
    Dele,
    DotStuffer,
    FetchUidls,
    List,
    LocalProtocolError,
    Login,
    Noop,
    Quit,
    RemoteProtocolError,
    Reply,
    Retr,
    Rset,
    StartTLS,
    Stat,
    Top,
    Uidl,
    UidlListing,
    auth_plain_response,
    client_command,
    parse_uidl_listing,
)

from .client_helpers import EOF, TLS, Send, Step, drive, raises_all_ways, run_all_ways, whole

GREETING = b"+OK Dovecot ready.\r\n"
CAPA = b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nUSER\r\nSTLS\r\nSASL PLAIN LOGIN\r\n.\r\n"
MESSAGE = b"Subject: hi\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n"


def stuffed(content: bytes) -> bytes:
    stuffer = DotStuffer()
    return stuffer.feed(content) + stuffer.end()


def stls_prefix() -> list[Step]:
    return [GREETING, Send(Capa()), CAPA, Send(StartTLS()), b"+OK Begin TLS\r\n", TLS]


def logged_in() -> list[Step]:
    return [TLS, GREETING, Send(Login("alice", "s3cret pass", "USER")), b"+OK\r\n+OK in\r\n"]


def test_stls_session_with_retrieval() -> None:
    script: list[Step] = [
        *stls_prefix(),
        Send(Login("alice", "s3cret pass", "USER")),
        b"+OK\r\n",
        b"+OK Logged in.\r\n",
        Send(Stat()),
        b"+OK 2 320\r\n",
        Send(Retr(1)),
        b"+OK 52 octets\r\n" + stuffed(MESSAGE),
        Send(FetchUidls()),
        b"+OK\r\n1 00000001abc\r\n2 00000002def\r\nnot a line\r\n.\r\n",
        Send(FetchUidls(2)),
        b"+OK 2 00000002def\r\n",
        Send(Uidl(None)),
        b"+OK\r\n1 u1\r\n.\r\n",
        Send(Dele(1)),
        b"+OK Marked\r\n",
        Send(Quit()),
        b"+OK Logging out.\r\n",
        EOF,
    ]
    transcript = run_all_ways(ClientConnection, script)
    capabilities = {
        "CAPA": (),
        "TOP": (),
        "UIDL": (),
        "USER": (),
        "STLS": (),
        "SASL": ("PLAIN", "LOGIN"),
    }
    assert transcript.merged == [
        Reply(True, "Dovecot ready."),
        Capabilities(Reply(True), capabilities),
        StartTLS(),
        Reply(True, "Logged in."),
        Reply(True, "2 320"),
        Reply(True, "52 octets"),
        BodyData(MESSAGE),
        BodyEnd(),
        UidlListing(Reply(True), {1: "00000001abc", 2: "00000002def"}),
        UidlListing(Reply(True, "2 00000002def"), {2: "00000002def"}),
        Reply(True),
        BodyData(b"1 u1\r\n"),
        BodyEnd(),
        Reply(True, "Marked"),
        Reply(True, "Logging out."),
        ConnectionClosed(CloseReason.QUIT),
    ]
    assert bytes(transcript.output) == (
        b"CAPA\r\nSTLS\r\nUSER alice\r\nPASS s3cret pass\r\nSTAT\r\nRETR 1\r\nUIDL\r\n"
        b"UIDL 2\r\nUIDL\r\nDELE 1\r\nQUIT\r\n"
    )


def test_body_pieces_are_whole_buffers_up_to_a_dot_line() -> None:
    """A body comes out in as few pieces as the buffer allows: everything up to the next line
    that starts with "." in one piece (that line needs a decision), not a piece a line."""
    conn = ClientConnection()
    drive(conn, whole([*logged_in(), Send(Retr(1))]))
    lines = b"".join(b"line %d of the message\r\n" % n for n in range(500))
    conn.receive_data(b"+OK\r\n" + lines + b"..dotted\r\nmore\r\n.\r\n")
    events = []
    while (event := conn.next_event()) != BodyEnd():
        events.append(event)
    assert events == [Reply(True), BodyData(lines), BodyData(b".dotted\r\nmore\r\n")]
    assert not conn.reply_due
    # A body larger than one piece comes out in BODY_PIECE_SIZE pieces at most.
    drive(conn, whole([Send(Retr(2))]))
    conn.receive_data(b"+OK\r\n" + b"x" * (BODY_PIECE_SIZE * 2 + 10) + b"\r\n.\r\n")
    sizes = []
    while not isinstance(event := conn.next_event(), BodyEnd):
        if isinstance(event, BodyData):
            sizes.append(len(event.data))
    assert sizes == [BODY_PIECE_SIZE, BODY_PIECE_SIZE, 12]


def test_user_refused_falls_back_to_auth_plain() -> None:
    transcript = run_all_ways(
        ClientConnection,
        [
            TLS,
            GREETING,
            Send(Login("alice", "secret", "USER")),
            b"-ERR USER not here\r\n",
            b"+OK Logged in.\r\n",
            Send(Noop()),
            b"+OK\r\n",
        ],
    )
    assert transcript.output == (
        b"USER alice\r\nAUTH PLAIN " + auth_plain_response("alice", "secret").encode() + b"\r\n"
        b"NOOP\r\n"
    )
    assert transcript.events[1:] == [Reply(True, "Logged in."), Reply(True)]


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice smith", "pw"), ("alice", "x" * 260)],
    ids=["space in the username", "over 255 octets"],
)
def test_credentials_that_do_not_fit_user_and_pass_go_by_auth_plain(
    username: str, password: str
) -> None:
    response = auth_plain_response(username, password).encode()
    initial = len(b"AUTH PLAIN " + response + b"\r\n") <= COMMAND_LINE_LIMIT
    server = [b"+OK in\r\n"] if initial else [b"+ \r\n", b"+OK in\r\n"]
    transcript = run_all_ways(
        ClientConnection, [TLS, GREETING, Send(Login(username, password, "USER")), *server]
    )
    if initial:
        assert transcript.output == b"AUTH PLAIN " + response + b"\r\n"
    else:  # RFC 5034 §4: the response after the server's "+"
        assert transcript.output == b"AUTH PLAIN\r\n" + response + b"\r\n"
    assert transcript.events[-1] == Reply(True, "in")


def test_a_continuation_where_none_belongs_is_cancelled() -> None:
    script: list[Step] = [
        TLS,
        GREETING,
        Send(Login("a", "b", "PLAIN")),
        b"+ \r\n",
        b"-ERR [AUTH] no\r\n",
    ]
    transcript = run_all_ways(ClientConnection, script)
    assert transcript.output.endswith(b"\r\n*\r\n")
    assert transcript.events[-1] == Reply(False, "no", "AUTH")
    raises_all_ways(
        ClientConnection, [*script[:-1], b"+ \r\n"], RemoteProtocolError, "unexpected continuation"
    )


def test_a_uidl_listing_over_its_limit_is_read_and_dropped() -> None:
    listing = b"+OK\r\n1 aaaa\r\n2 bbbb\r\n3 cccc\r\n.\r\n"
    transcript = run_all_ways(
        ClientConnection,
        [*logged_in(), Send(FetchUidls(limit=10)), listing, Send(Stat()), b"+OK 3 30\r\n"],
    )
    assert transcript.events[-2:] == [
        UidlListing(Reply(True), {}, complete=False),
        Reply(True, "3 30"),
    ]
    # Just at the limit it is kept.
    transcript = run_all_ways(ClientConnection, [*logged_in(), Send(FetchUidls(limit=24)), listing])
    assert transcript.events[-1] == UidlListing(Reply(True), {1: "aaaa", 2: "bbbb", 3: "cccc"})


def test_refusals_of_listings_and_of_uidl_n() -> None:
    transcript = run_all_ways(
        ClientConnection,
        [
            *logged_in(),
            Send(FetchUidls()),
            b"-ERR no UIDL\r\n",
            Send(FetchUidls(9)),
            b"-ERR no such message\r\n",
            Send(FetchUidls(3)),
            b"+OK 4 other\r\n",  # a different number: not taken as message 3's
            Send(Capa()),
            b"-ERR what\r\n",
            Send(Top(1, 0)),
            b"-ERR no such message\r\n",
        ],
    )
    assert transcript.events[-5:] == [
        UidlListing(Reply(False, "no UIDL"), {}),
        UidlListing(Reply(False, "no such message"), {}),
        UidlListing(Reply(True, "4 other"), {}),
        Capabilities(Reply(False, "what"), {}),
        Reply(False, "no such message"),
    ]


@pytest.mark.parametrize(
    ("script", "match", "temporary"),
    [
        ([b"-ERR go away\r\n"], "refused the session: go away", True),
        (
            [GREETING, Send(Capa()), b"+OK\r\nUSER\r\n.\r\n", Send(StartTLS())],
            "does not offer STLS",
            False,
        ),
        (
            [GREETING, Send(Capa()), b"-ERR unknown\r\n", Send(StartTLS())],
            "does not offer STLS",
            False,
        ),
        (
            [GREETING, Send(Capa()), CAPA, Send(StartTLS()), b"-ERR not now\r\n"],
            "refused STLS: not now",
            True,
        ),
        ([b"+OK " + b"x" * 600 + b"\r\n"], "broke the protocol: status line longer", True),
        ([b"* OK imap\r\n"], "broke the protocol: status line", True),
        ([GREETING, Send(Capa()), b"+ go on\r\n"], "unexpected continuation", True),
        ([GREETING, Send(Capa()), EOF], "closed the connection", True),
        ([*logged_in(), Send(Retr(1)), b"+OK\r\npartial", EOF], "inside a response", True),
        (
            [GREETING, Send(Capa()), b"+OK\r\n" + b"X-LONG\r\n" * (CAPA_SIZE_LIMIT // 8 + 1)],
            "CAPA listing over",
            True,
        ),
    ],
    ids=lambda v: repr(v)[:40] if not isinstance(v, bool) else str(v),
)
def test_remote_errors_say_what_to_do(script: list[Step], match: str, temporary: bool) -> None:
    errors = raises_all_ways(ClientConnection, script, RemoteProtocolError, match)
    assert {getattr(e, "temporary", None) for e in errors} == {temporary}


def test_response_injection_after_stls() -> None:
    """Bytes that came with STLS's +OK, or before the handshake, were sent in the clear: they
    are refused whenever they arrive (RFC 2595 §4)."""
    script: list[Step] = [
        GREETING,
        Send(Capa()),
        CAPA,
        Send(StartTLS()),
        b"+OK go\r\n+OK injected\r\n",
        TLS,
    ]
    raises_all_ways(ClientConnection, script, RemoteProtocolError, "sent data after its STLS")


def test_capabilities_are_forgotten_when_tls_starts() -> None:
    conn = ClientConnection()
    drive(conn, whole(stls_prefix()))
    assert conn.state is ClientState.AUTHORIZATION
    assert conn.capabilities is None  # RFC 2595 §4: ask again under TLS
    assert conn.tls_active
    drive(conn, whole([Send(Capa()), b"+OK\r\nUSER\r\n.\r\n"]))
    assert conn.capabilities == {"USER": ()}


@pytest.mark.parametrize(
    ("prefix", "command", "match"),
    [
        ([], Capa(), "cannot be sent in GREETING"),
        ([GREETING], Stat(), "cannot be sent in AUTHORIZATION"),
        ([GREETING], Login("a", "b", "USER"), "without TLS"),
        ([GREETING], StartTLS(), "only after CAPA"),
        ([TLS, GREETING], StartTLS(), "already active"),
        ([TLS, GREETING], Login("a", "b", "APOP"), "no login mechanism"),
        ([GREETING, Send(Capa())], Capa(), "is due"),
        ([*logged_in(), Send(Retr(1)), b"+OK\r\nbody\r\n"], Stat(), "is due"),
        ([*logged_in()], Login("a", "b", "USER"), "cannot be sent in TRANSACTION"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_local_errors_change_nothing(prefix: list[Step], command: object, match: str) -> None:
    conn = ClientConnection()
    drive(conn, whole(prefix))
    before = (conn.state, conn.reply_due, conn.capabilities, conn.buffered)
    with pytest.raises(LocalProtocolError, match=match):
        conn.send(command)  # type: ignore[arg-type]
    assert (conn.state, conn.reply_due, conn.capabilities, conn.buffered) == before


def test_quit_refused_still_ends_the_session() -> None:
    conn = ClientConnection()
    transcript = drive(conn, whole([*logged_in(), Send(Quit()), b"-ERR some deleted\r\n", EOF]))
    assert transcript.events[-2:] == [
        Reply(False, "some deleted"),
        ConnectionClosed(CloseReason.QUIT),
    ]
    assert conn.state is ClientState.CLOSED


def test_client_command_from_words() -> None:
    assert client_command("stat") == Stat()
    assert client_command("LIST") == List(None)
    assert client_command("LIST", "3") == List(3)
    assert client_command("UIDL", "3") == Uidl(3)
    assert client_command("RETR", "1") == Retr(1)
    assert client_command("DELE", "2") == Dele(2)
    assert client_command("TOP", "1", "0") == Top(1, 0)
    assert client_command("RSET") == Rset()
    assert client_command("QUIT") == Quit()
    assert client_command("STLS") == StartTLS()
    for words in (("RETR",), ("RETR", "x"), ("TOP", "1"), ("USER", "a"), ("STAT", "1")):
        with pytest.raises(ValueError):  # noqa: PT011 - any of the messages
            client_command(*words)


@pytest.mark.parametrize(
    ("listing", "expected"),
    [
        (b"1 abc\r\n2 def\r\n", {1: "abc", 2: "def"}),
        (b"1 abc\n", {1: "abc"}),
        (b"1 abc extra\r\n2\r\n\r\nx y\r\n-1 z\r\n", {}),
        (b"1 ab\x01c\r\n2 \xc3\xa9\r\n3 ok\r\n", {3: "ok"}),  # RFC 1939 §7: 0x21-0x7E
        ("\u00b2 two\r\n".encode(), {}),  # a digit only to Unicode
        (b"1234567890 big\r\n", {}),
    ],
)
def test_parse_uidl_listing(listing: bytes, expected: dict[int, str]) -> None:
    assert parse_uidl_listing(listing) == expected
