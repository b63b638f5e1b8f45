"""The administrator's first hour with the command line (issue 15): what it says without
credentials, to a gateway that is not running, into a closed pipe, about the reserved id, an
unknown event type, a ``since`` ahead of the log, a mailbox already suspended, and two
mailboxes of one name. Each against a real gateway and the CLI as a separate process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.events import MailboxStatus
from gateway.ids import InvalidId, parse_mailbox_id

from .gateway_helpers import Running
from .test_cli_admin import cli

ZERO_ID = "0" * 32


def cli_command(running: Running, *args: str) -> list[str]:
    data_dir = str(running.cafile.parent.parent)
    return [
        sys.executable,
        "-m",
        "gateway",
        *args,
        "--url",
        running.admin_url,
        "--data-dir",
        data_dir,
    ]


def cli_environment(running: Running) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environment["GATEWAY_ADMIN_PASSWORD"] = running.admin_password
    return environment


@asynccontextmanager
async def cli_into_pipe(
    running: Running, tmp_path: Path, *args: str
) -> AsyncIterator[tuple[trio.Process, trio.lowlevel.FdStream, Path]]:
    """The CLI writing into a pipe whose read end the test holds (and may close early);
    its standard error goes to a file."""
    read_end, write_end = os.pipe()
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        try:
            process = await trio.lowlevel.open_process(
                cli_command(running, *args),
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=stderr,
                env=cli_environment(running),
            )
        finally:
            os.close(write_end)
    reader = trio.lowlevel.FdStream(read_end)
    try:
        yield process, reader, stderr_path
    finally:
        await reader.aclose()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_lines(reader: trio.lowlevel.FdStream, buffer: bytearray, count: int) -> list[str]:
    """At least ``count`` more complete lines from the pipe (``buffer`` keeps the rest)."""
    lines: list[str] = []
    with trio.fail_after(30):
        while len(lines) < count:
            while b"\n" not in buffer:
                chunk = await reader.receive_some()
                assert chunk, f"the CLI ended early; got {lines}"
                buffer.extend(chunk)
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            lines.append(line.decode())
    return lines


async def wait_for_subscriber(running: Running) -> None:
    hub = running.gateway.hub
    assert hub is not None
    with trio.fail_after(30):
        while hub.subscribers == 0:  # noqa: ASYNC110 - the hub has no event for this
            await trio.sleep(0.05)


# -- 1. no credentials, no terminal ----------------------------------------------------------


async def test_without_credentials_says_what_to_set_and_where_the_password_is(
    running: Running,
) -> None:
    code, out, err = await cli(
        running, "mailbox", "create", "Legal", env={"GATEWAY_ADMIN_PASSWORD": ""}
    )
    assert code == 2 and out == ""
    assert "GATEWAY_TOKEN" in err and "GATEWAY_ADMIN_PASSWORD" in err
    assert "gateway token create" in err  # where an API token comes from
    data_dir = running.cafile.parent.parent
    assert str(data_dir / "admin" / "initial-password") in err  # where the first one is
    assert len(err.strip().splitlines()) <= 2
    assert running.archive.mailboxes() == []


# -- 2. nothing listens ----------------------------------------------------------------------


async def test_gateway_not_running_says_so_with_the_url_and_how_to_start_it(
    running: Running,
) -> None:
    # A port bound but not listening: every connection to it is refused, and nothing else
    # can take it while the test runs.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        url = f"wss://localhost:{bound.getsockname()[1]}/api"
        for env in ({}, {"GATEWAY_ADMIN_PASSWORD": ""}):  # with and without credentials
            code, out, err = await cli(running, "mailbox", "list", "--url", url, env=env)
            assert code == 3 and out == ""
            assert f"no gateway seems to be running at {url}" in err
            assert "gateway serve" in err and "systemctl start gateway" in err
            assert "GATEWAY_TOKEN" not in err  # not the credentials message


# -- 3. standard output closed ---------------------------------------------------------------


async def test_status_into_a_closed_pipe_ends_quietly(running: Running, tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written (`| head -0`)
    try:
        result = await trio.run_process(
            cli_command(running, "status"),
            stdin=b"",
            stdout=write_end,
            capture_stderr=True,
            check=False,
            env=cli_environment(running),
        )
    finally:
        os.close(write_end)
    assert result.stderr.decode() == ""  # no traceback, no "Exception ignored"
    assert result.returncode == 141


async def test_audit_follow_into_a_pipe_closed_early_ends_quietly(
    running: Running, tmp_path: Path
) -> None:
    """`gateway audit tail --follow | head -1`: the reader takes one line and goes; the next
    record ends the command, quietly."""
    async with cli_into_pipe(running, tmp_path, "audit", "tail", "--since", "0", "--follow") as (
        process,
        reader,
        stderr_path,
    ):
        assert await read_lines(reader, bytearray(), 1)
        await wait_for_subscriber(running)
        await reader.aclose()
        await running.archive.create_mailbox("After the reader left")
        with trio.fail_after(30):
            await process.wait()
    assert stderr_path.read_text() == ""
    assert process.returncode == 141


# -- 4. the reserved all-zero id -------------------------------------------------------------


def test_all_zero_id_is_refused_as_reserved() -> None:
    for spelling in (ZERO_ID, f"mbx-{ZERO_ID}@localhost"):
        with pytest.raises(InvalidId, match="reserved") as refused:
            parse_mailbox_id(spelling)
        assert "hexadecimal" not in str(refused.value)
    with pytest.raises(InvalidId, match="32 hexadecimal"):
        parse_mailbox_id("0" * 31)
    assert parse_mailbox_id("0" * 31 + "1") == "0" * 31 + "1"


async def test_cli_names_the_all_zero_id_reserved(running: Running) -> None:
    code, _, err = await cli(running, "mailbox", "show", ZERO_ID)
    assert code == 5 and "no-such-mailbox" in err
    assert "reserved" in err and "control log" in err
    assert "32 hexadecimal" not in err


# -- 5. an unknown event type ----------------------------------------------------------------


async def test_unknown_event_type_is_a_usage_error_naming_the_types(running: Running) -> None:
    code, out, err = await cli(running, "audit", "tail", "--since", "0", "--type", "NoSuchType")
    assert code == 2 and out == ""
    assert "NoSuchType" in err
    assert "AdminLogin" in err and "MailboxCreated" in err and "GatewayStarted" in err
    code, _, err = await cli(running, "audit", "tail", "--type", "apitokencreated")
    assert code == 2 and "did you mean ApiTokenCreated?" in err
    code, out, err = await cli(running, "audit", "tail", "--since", "0", "--type", "GatewayStarted")
    assert code == 0 and "GatewayStarted" in out, err


# -- 6. --follow --since ahead of the log ----------------------------------------------------


async def test_follow_since_ahead_of_the_log_waits_for_it(running: Running, tmp_path: Path) -> None:
    since = running.archive.next_control_seq + 3
    async with cli_into_pipe(
        running, tmp_path, "audit", "tail", "--since", str(since), "--follow", "--json"
    ) as (_, reader, stderr_path):
        await wait_for_subscriber(running)
        while running.archive.next_control_seq <= since + 1:  # records before, at, after
            await running.archive.create_mailbox("Filler")
        lines = await read_lines(reader, bytearray(), 1)
    seqs = [json.loads(line)["seq"] for line in lines]
    assert seqs[0] == since, (seqs, stderr_path.read_text())


async def test_hub_offers_nothing_before_since(running: Running) -> None:
    """The server's side: a subscription from a ``since`` beyond the end starts there (its
    history is empty and no earlier live record is offered)."""
    hub = running.gateway.hub
    assert hub is not None
    since = running.archive.next_control_seq + 2
    subscription = hub.subscribe(None, frozenset(), since=since)
    try:
        assert subscription.start_seq == since
        assert [b async for b in hub.history(since, subscription.start_seq)] == []
        while running.archive.next_control_seq <= since:
            await running.archive.create_mailbox("Filler")
        with trio.fail_after(30):
            first = await subscription.receive.receive()
        assert first.seq == since
    finally:
        hub.unsubscribe(subscription)


# -- 7. suspend twice, activate twice --------------------------------------------------------


async def test_suspend_and_activate_say_when_nothing_changes(running: Running) -> None:
    info, _ = await running.archive.create_mailbox("Sales")
    short = info.mailbox_id[:8]
    code, out, err = await cli(running, "mailbox", "suspend", info.mailbox_id)
    assert code == 0, err
    assert "already" not in out
    seq = running.archive.next_control_seq
    code, out, err = await cli(running, "mailbox", "suspend", info.mailbox_id)
    assert code == 0, err
    assert f"mailbox Sales [{short}] already was suspended" in out
    code, out, err = await cli(running, "mailbox", "suspend", info.mailbox_id, "--json")
    assert code == 0 and json.loads(out)["unchanged"] is True, err
    # Nothing changed, so nothing was recorded but the logins.
    types = {
        r["event"]["type"]
        for r in await audit_records(running, since=seq)
        if r["event"] is not None
    }
    assert "MailboxUpdated" not in types
    code, out, err = await cli(running, "mailbox", "activate", info.mailbox_id)
    assert code == 0 and "already" not in out, err
    code, out, err = await cli(running, "mailbox", "activate", info.mailbox_id)
    assert code == 0 and f"mailbox Sales [{short}] already was active" in out, err


async def audit_records(running: Running, *, since: int) -> list[dict[str, Any]]:
    code, out, err = await cli(running, "audit", "tail", "--since", str(since), "--json")
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


# -- 8. two mailboxes of one name ------------------------------------------------------------


async def test_mailboxes_of_one_name_are_told_apart_by_a_short_id(running: Running) -> None:
    first, _ = await running.archive.create_mailbox("Journal")
    second, _ = await running.archive.create_mailbox("Journal")
    labels = [f"Journal [{box.mailbox_id[:8]}]" for box in (first, second)]
    code, out, err = await cli(running, "mailbox", "list")
    assert code == 0, err
    for label in labels:
        assert label in out
    code, out, err = await cli(running, "audit", "tail", "--since", "0", "--type", "MailboxCreated")
    assert code == 0, err
    lines = out.splitlines()
    assert [line for line in lines if labels[0] in line] != []
    assert [line for line in lines if labels[1] in line] != []
    # A mailbox known only from the records shown (deleted since) is named as it was then.
    await running.archive.update_mailbox(first.mailbox_id, status=MailboxStatus.SUSPENDED)
    await running.archive.delete_mailbox(first.mailbox_id)
    code, out, err = await cli(running, "audit", "tail", "--since", "0")
    assert code == 0, err
    deleted = [line for line in out.splitlines() if "MailboxDeleted" in line]
    assert len(deleted) == 1 and labels[0] in deleted[0]
