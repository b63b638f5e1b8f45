"""Property tests: any bytes, in any state, give events and well-formed replies or a
ConnectionClosed, never another exception, and the machine's buffers stay bounded."""

from __future__ import annotations

from hypothesis import event as note_kind
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.smtp import (
    BODY_PIECE_SIZE,
    NEED_DATA,
    PAUSED,
    Authenticate,
    BodyData,
    ConnectionClosed,
    Event,
    MailFrom,
    MessageAborted,
    MessageComplete,
    Reply,
    ServerConnection,
    SMTPSettings,
    StartTLS,
    replies,
)

from .helpers import drive, parse_replies, split_random, split_whole

EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<a@example.org>\r\n"
RCPT = b"RCPT TO:<j@mx.test>\r\n"
PREFIXES = {
    "greeted": b"",
    "ready": EHLO,
    "helo": b"HELO old\r\n",
    "mail": EHLO + MAIL,
    "rcpt": EHLO + MAIL + RCPT,
    "data": EHLO + MAIL + RCPT + b"DATA\r\nSubject: x\r\n",
    "chunked": EHLO + MAIL + RCPT + b"BDAT 3\r\nabc",
    "bdat": EHLO + MAIL + RCPT + b"BDAT 40\r\nab",
    "auth": EHLO + b"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n",
}
TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b"\r\n.\r\n",
    b" ",
    b"EHLO x",
    b"HELO y",
    b"MAIL FROM:<a@b.example>",
    b"MAIL FROM:<>",
    b"RCPT TO:<j@mx.test>",
    b"RCPT TO:<postmaster>",
    b"DATA",
    b"BDAT 5",
    b"BDAT 0 LAST",
    b"BDAT 99999999",
    b" LAST",
    b"RSET",
    b"QUIT",
    b"STARTTLS",
    b"NOOP",
    b"VRFY x",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
    b"YWxpY2U=",
    b"*",
    b"=",
    b"GET / HTTP/1.1",
    b" SIZE=99999999999",
    b" SIZE=10",
    b" BODY=BINARYMIME",
    b" SMTPUTF8",
    "<ü@ü.example>".encode(),
    b"\x00",
    b"\xff\xfe",
    b"x" * 700,
]
# Whole command lines make up a third of the draws, so the machine gets deep into sessions.
LINES = [
    EHLO,
    MAIL,
    RCPT,
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 2 LAST\r\n",
    b"\r\n.\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH LOGIN\r\n",
    b"YWxpY2U=\r\n",
]
payloads = st.lists(
    st.sampled_from(LINES) | st.sampled_from(TOKENS) | st.binary(max_size=12), max_size=40
).map(b"".join)


def _settings(*, tls_active: bool, auth: bool, **kw: object) -> SMTPSettings:
    starttls = bool(kw.pop("starttls_offered"))
    auth = auth and (tls_active or starttls)
    return SMTPSettings(
        tls_active=tls_active,
        starttls_offered=starttls,
        auth_offered=auth,
        **kw,  # type: ignore[arg-type]
    )


def configs(starttls: st.SearchStrategy[bool]) -> st.SearchStrategy[SMTPSettings]:
    return st.builds(
        _settings,
        tls_active=st.booleans(),
        auth=st.booleans(),
        hostname=st.just("mx.test"),
        max_message_size=st.sampled_from([30, 1000]),
        max_recipients=st.sampled_from([2, 1000]),
        starttls_offered=starttls,
        bare_newline=st.sampled_from(["normalize", "reject"]),
        bad_command_budget=st.sampled_from([0, 3, 20]),
        max_line_length=st.sampled_from([512, 4096]),
    )


# None accepts; mostly accept, so the sessions get deep.
ANSWERS = [None] * 5 + [replies.UNKNOWN_RECIPIENT, replies.LOCAL_ERROR, replies.SHUTTING_DOWN]


def _answer(event: Event, choice: Reply | None) -> Reply:
    if choice is not None:
        return choice
    if isinstance(event, Authenticate):
        return replies.AUTH_OK
    return replies.RECIPIENT_OK if not isinstance(event, MessageComplete) else replies.OK


@settings(max_examples=300)
@given(
    config=configs(st.booleans()),
    prefix=st.sampled_from(sorted(PREFIXES)),
    payload=payloads,
    cuts=st.lists(st.integers(1, 50), max_size=20),
    answers=st.lists(st.sampled_from(ANSWERS), max_size=20),
)
def test_any_input_gives_events_replies_or_a_close(
    config: SMTPSettings, prefix: str, payload: bytes, cuts: list[int], answers: list[Reply | None]
) -> None:
    conn = ServerConnection(config)
    output = bytearray(conn.greeting())
    data = PREFIXES[prefix] + payload
    chunks = []
    for cut in cuts:
        chunks.append(data[:cut])
        data = data[cut:]
    chunks += [data, b""]  # the rest, then EOF

    decisions = 0
    in_transaction = False
    size = 0
    closed = False
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            output += conn.data_to_send()
            if event is NEED_DATA:
                assert conn.statistics().buffered < config.max_line_length
                break
            if event is PAUSED:
                continue  # answered below, when the decision came out
            assert not closed, "an event after ConnectionClosed"
            note_kind(type(event).__name__)  # --hypothesis-show-statistics shows the mix
            if isinstance(event, StartTLS):
                conn.tls_started("TLSv1.3", "TLS_AES_128_GCM_SHA256")
            elif isinstance(event, Authenticate):
                assert not in_transaction
                choice = answers[decisions % len(answers)] if answers else None
                decisions += 1
                output += conn.send(_answer(event, choice))
            elif isinstance(event, MailFrom | MessageComplete) or type(event).__name__ == "RcptTo":
                choice = answers[decisions % len(answers)] if answers else None
                decisions += 1
                reply = _answer(event, choice)
                if isinstance(event, MailFrom):
                    assert not in_transaction
                    in_transaction = reply.code == 250
                    size = 0
                elif isinstance(event, MessageComplete):
                    assert in_transaction
                    in_transaction = False
                output += conn.send(reply)
            elif isinstance(event, BodyData):
                assert in_transaction
                assert 0 < len(event.data) <= 2 * BODY_PIECE_SIZE
                size += len(event.data)
                assert size <= config.max_message_size
            elif isinstance(event, MessageAborted):
                assert in_transaction
                in_transaction = False
            elif isinstance(event, ConnectionClosed):
                assert not in_transaction
                closed = True
            if closed:
                break
        if closed:
            break
    assert closed, "EOF must end the session"
    assert conn.next_event() == event  # and the end is sticky
    # Everything written is a sequence of complete, well-formed replies.
    written = parse_replies(bytes(output))
    assert written[0].code == 220
    assert conn.statistics().buffered == 0


@settings(max_examples=150)
@given(
    config=configs(st.just(False)),  # after STARTTLS, splitting matters by design
    prefix=st.sampled_from(sorted(PREFIXES)),
    payload=payloads,
    seed=st.integers(0, 2**16),
)
def test_any_input_gives_the_same_result_however_split(
    config: SMTPSettings, prefix: str, payload: bytes, seed: int
) -> None:
    script = [PREFIXES[prefix] + payload]
    whole = drive(ServerConnection(config), split_whole(script))
    split = drive(ServerConnection(config), split_random(script, seed))
    assert split.merged == whole.merged
    assert split.output == whole.output
