"""The pieces both protocol machines share: the bounded line splitter and the errors."""

from __future__ import annotations

from types import ModuleType

import pytest

from gateway.protocols import _errors, pop3, smtp
from gateway.protocols._lines import TOO_LONG, LineSplitter


def split(data: bytes, limit: int, *, step: int) -> list[object]:
    splitter, buf = LineSplitter(limit), bytearray()
    out: list[object] = []
    for i in range(0, len(data), step):
        buf += data[i : i + step]
        while (line := splitter.take(buf)) is not None:
            out.append(line)
    return out


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_lines_keep_their_cr_and_split_alike_however_fed(step: int) -> None:
    data = b"one\r\ntwo\nthree\r\r\n" + b"x" * 20 + b"\r\nlast\r\n"
    assert split(data, 10, step=step) == [b"one\r", b"two", b"three\r\r", TOO_LONG, b"last\r"]


def test_an_overlong_line_is_reported_once_and_skipped_unbuffered() -> None:
    splitter, buf = LineSplitter(8), bytearray(b"x" * 8)
    assert splitter.take(buf) is TOO_LONG
    assert buf == b""
    buf += b"y" * 100
    assert splitter.take(buf) is None
    assert buf == b""
    buf += b"z\r\nok\r\n"
    assert splitter.take(buf) == b"ok\r"


def test_the_limit_counts_the_line_ending_and_may_change() -> None:
    splitter = LineSplitter(5)
    assert splitter.take(bytearray(b"abc\r\n")) == b"abc\r"
    assert splitter.take(bytearray(b"abcd\r\n")) is TOO_LONG
    splitter.limit = 6
    assert splitter.take(bytearray(b"abcd\r\n")) == b"abcd\r"


def test_the_protocols_line_readers_read_the_line_end_their_own_way() -> None:
    assert smtp._readers.LineReader(10).read(bytearray(b"a\n")) == smtp._readers.Line(b"a", True)
    assert pop3.LineReader(10).read(bytearray(b"a\r\n")) == b"a"
    assert smtp._readers.TOO_LONG is pop3._readers.TOO_LONG is TOO_LONG


@pytest.mark.parametrize("module", [smtp, pop3])
def test_each_protocol_has_its_own_errors_on_the_shared_ones(module: ModuleType) -> None:
    local, remote = module.LocalProtocolError, module.RemoteProtocolError
    with pytest.raises(TypeError):
        module.ProtocolError("neither")
    error = remote("bad", temporary=False)
    assert isinstance(error, _errors.RemoteProtocolError)
    assert (error.reply, error.temporary, str(error)) == (None, False, "bad")
    assert issubclass(local, _errors.LocalProtocolError)
    other = pop3 if module is smtp else smtp
    assert not isinstance(error, other.RemoteProtocolError)


# -- the machine scaffolding (protocols/_machine.py), the same contract in every machine --------


def servers() -> list[tuple[ModuleType, smtp.ServerConnection | pop3.ServerConnection]]:
    smtp_settings = smtp.SMTPSettings(hostname="mx.example")
    pop3_settings = pop3.POP3Settings("pop.example", tls_active=False, stls_offered=True)
    return [
        (smtp, smtp.ServerConnection(smtp_settings)),
        (pop3, pop3.ServerConnection(pop3_settings)),
    ]


@pytest.mark.parametrize("index", [0, 1])
def test_a_server_machine_needs_its_greeting_and_refuses_bytes_after_eof(index: int) -> None:
    module, conn = servers()[index]
    with pytest.raises(module.LocalProtocolError, match="greeting"):
        conn.next_event()
    conn.greeting()
    assert conn.next_event() is module.NEED_DATA
    conn.receive_data(b"")
    conn.receive_data(b"")  # EOF again is harmless
    with pytest.raises(module.LocalProtocolError, match="after EOF"):
        conn.receive_data(b"x")
    closed = conn.next_event()
    assert closed == module.ConnectionClosed(module.CloseReason.EOF)
    assert conn.next_event() == closed  # forever
    with pytest.raises(module.LocalProtocolError, match="no decision"):
        conn.send(module.replies.SHUTTING_DOWN)


@pytest.mark.parametrize("index", [0, 1])
def test_a_server_machine_closes_locally_once(index: int) -> None:
    module, conn = servers()[index]
    conn.greeting()
    first = conn.close()
    assert first
    assert conn.close() == b""
    assert conn.next_event() == module.ConnectionClosed(
        module.CloseReason.LOCAL, module.replies.SHUTTING_DOWN
    )
    conn.receive_data(b"QUIT\r\n")  # dropped: the session is over
    assert conn.statistics().discarded == 6


@pytest.mark.parametrize("module", [smtp, pop3])
def test_a_client_machine_refuses_what_its_state_does_not_take(module: ModuleType) -> None:
    conn = module.ClientConnection()
    assert conn.reply_due  # the greeting
    with pytest.raises(module.LocalProtocolError, match="cannot be sent in GREETING"):
        conn.send(module.Quit())
    assert conn.next_event() is module.NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(module.RemoteProtocolError, match="closed the connection"):
        conn.next_event()
    assert conn.state is module.ClientState.CLOSED
    assert conn.next_event() == module.ConnectionClosed(module.CloseReason.EOF)
    with pytest.raises(module.LocalProtocolError, match="waiting for its handshake"):
        conn.tls_started()


@pytest.mark.parametrize("module", [smtp, pop3])
def test_a_client_machine_starts_implicit_tls_only_before_any_byte(module: ModuleType) -> None:
    conn = module.ClientConnection()
    conn.tls_started()
    assert conn.tls_active
    late = module.ClientConnection()
    late.receive_data(b"+")
    with pytest.raises(module.LocalProtocolError):
        late.tls_started()
    assert not late.tls_active
