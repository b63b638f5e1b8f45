"""`gateway mailbox|token|admin|audit|status`: the command line against a running gateway,
as a separate process, as a script would use it."""

from __future__ import annotations

import json
import os
import sys

import trio

from .gateway_helpers import Running


async def cli(
    running: Running, *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    data_dir = str(running.cafile.parent.parent)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environment["GATEWAY_ADMIN_PASSWORD"] = running.admin_password
    environment.update(env or {})
    url = [] if "--url" in args else ["--url", running.admin_url]
    result = await trio.run_process(
        [sys.executable, "-m", "gateway", *args, *url, "--data-dir", data_dir],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environment,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_create_list_passwd_delete(running: Running) -> None:
    code, out, err = await cli(running, "mailbox", "create", "Accounts", "--json")
    assert code == 0, err
    created = json.loads(out)
    mailbox_id = created["mailbox"]["mailbox_id"]
    assert created["mailbox"]["address"] == f"mbx-{mailbox_id}@localhost"
    await running.archive.unlock(mailbox_id, created["password"])

    code, out, err = await cli(running, "mailbox", "list", "--json")
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)["mailboxes"]] == ["Accounts"]
    code, out, _ = await cli(running, "mailbox", "list")
    assert "Accounts" in out and mailbox_id in out  # the table

    # passwd: old password on stdin, new one generated and shown once.
    code, out, err = await cli(
        running,
        "mailbox",
        "passwd",
        mailbox_id,
        "--json",
        stdin=f"{created['password']}\n".encode(),
    )
    assert code == 0, err
    new_password = json.loads(out)["password"]
    await running.archive.unlock(mailbox_id, new_password)
    code, _, err = await cli(running, "mailbox", "passwd", mailbox_id, stdin=b"wrong password\n")
    assert code == 5 and "wrong-password" in err

    # delete: refused while active (exit 5, the server's reason), then done.
    code, _, err = await cli(running, "mailbox", "delete", mailbox_id)
    assert code == 5 and "suspended" in err
    assert (await cli(running, "mailbox", "suspend", mailbox_id))[0] == 0
    code, out, err = await cli(running, "mailbox", "delete", mailbox_id)
    assert code == 0, err
    assert "deleted" in out
    code, _, err = await cli(running, "mailbox", "show", mailbox_id)
    assert code == 5 and "no-such-mailbox" in err


async def test_tokens_login_failures_and_audit_tail(running: Running) -> None:
    code, out, err = await cli(running, "token", "create", "nightly", "--days", "7", "--json")
    assert code == 0, err
    token = json.loads(out)["token"]
    code, out, err = await cli(
        running, "status", "--json", env={"GATEWAY_TOKEN": token, "GATEWAY_ADMIN_PASSWORD": ""}
    )
    assert code == 0, err
    assert json.loads(out)["mail_domain"] == "localhost"

    assert running.gateway.accounts is not None
    running.gateway.accounts.failure_delay = 0.01
    code, _, err = await cli(running, "mailbox", "list", env={"GATEWAY_ADMIN_PASSWORD": "nope"})
    assert code == 4 and "login refused" in err

    code, out, err = await cli(running, "audit", "tail", "--since", "0", "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in records] == sorted(r["seq"] for r in records)
    types = {r["event"]["type"] for r in records}
    assert {"GatewayStarted", "AdminAccountCreated", "ApiTokenCreated", "AdminLogin"} <= types
    code, out, _ = await cli(running, "audit", "tail", "--since", "0", "--type", "ApiTokenCreated")
    assert code == 0 and "ApiTokenCreated" in out and "nightly" in out
    assert token not in out

    # Unreachable gateway: exit 3.
    code, _, err = await cli(running, "status", "--url", "wss://localhost:1/api")
    assert code == 3 and "cannot connect" in err
