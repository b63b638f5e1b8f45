"""The transition table is data; these check it says what the RFCs say."""

from __future__ import annotations

from gateway.protocols.smtp import State
from gateway.protocols.smtp._state import (
    ALLOWED_BEFORE_STARTTLS,
    COMMAND_STATES,
    FORBIDDEN_COMMANDS,
    KNOWN_COMMANDS,
    SEQUENCE_REPLIES,
    TRANSACTION_STATES,
    TRANSITIONS,
    UNIMPLEMENTED_COMMANDS,
)


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(State)


def test_only_command_states_take_commands() -> None:
    for state, row in TRANSITIONS.items():
        assert bool(row) == (state in COMMAND_STATES), state


def test_always_available_commands() -> None:
    # RFC 5321 §4.1.4: these may be sent at any time outside the content.
    for state in COMMAND_STATES:
        row = TRANSITIONS[state]
        assert row["QUIT"] is State.CLOSED
        assert row["EHLO"] is row["HELO"] is State.READY
        assert row["NOOP"] is row["HELP"] is row["VRFY"] is state
        assert row["RSET"] is (State.GREETED if state is State.GREETED else State.READY)


def test_the_transaction_order() -> None:
    assert TRANSITIONS[State.READY]["MAIL"] is State.MAIL
    assert TRANSITIONS[State.MAIL]["RCPT"] is State.RCPT
    assert "DATA" not in TRANSITIONS[State.MAIL]  # no accepted recipient yet
    assert TRANSITIONS[State.RCPT]["DATA"] is State.DATA
    assert TRANSITIONS[State.RCPT]["BDAT"] is TRANSITIONS[State.CHUNKED]["BDAT"] is State.BDAT
    assert "DATA" not in TRANSITIONS[State.CHUNKED]  # RFC 3030 §2
    assert "RCPT" not in TRANSITIONS[State.CHUNKED]
    for state in TRANSACTION_STATES:
        assert "MAIL" not in TRANSITIONS[state]
        assert "STARTTLS" not in TRANSITIONS[state]
    assert [s for s, row in TRANSITIONS.items() if "STARTTLS" in row] == [State.READY]


def test_command_sets() -> None:
    assert ALLOWED_BEFORE_STARTTLS <= KNOWN_COMMANDS
    assert not KNOWN_COMMANDS & UNIMPLEMENTED_COMMANDS
    assert not (KNOWN_COMMANDS | UNIMPLEMENTED_COMMANDS) & FORBIDDEN_COMMANDS
    verbs = {verb for row in TRANSITIONS.values() for verb in row}
    assert verbs == KNOWN_COMMANDS
    for (state, verb), reply in SEQUENCE_REPLIES.items():
        assert state in COMMAND_STATES and verb in KNOWN_COMMANDS
        assert verb not in TRANSITIONS[state], (state, verb)
        assert reply.code in (503, 554)
