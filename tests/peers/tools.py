"""Thin wrappers around the SMTP test tools Debian ships, run against host:port:

- swaks 20201014 (Debian 12): one message per run; STARTTLS (``tls``), implicit TLS
  (``tls_on_connect``), PIPELINING (``pipeline``), AUTH, XCLIENT. It has no BDAT/CHUNKING
  (that came in swaks 20240103), so BDAT interop needs another client.
- smtp-source (Postfix): many messages over parallel sessions, no PIPELINING, no TLS.

Each returns the finished ``subprocess.CompletedProcess`` with the transcript in ``stdout`` and
``stderr``; with ``check=True`` (the default) a non-zero exit raises :class:`ToolError`
carrying that transcript. They block: from trio, call them with ``trio.to_thread.run_sync``.

A tool that is missing FAILS the test (``pytest.fail``), it never skips: the suite is only
green when the peers really ran. tests/peers/install.sh installs them all.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

__all__ = [
    "ToolError",
    "free_port",
    "require",
    "smtp_source",
    "swaks",
    "wait_for_port",
]

SBIN = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOL_TIMEOUT = 120.0  # seconds any one tool run may take before the test fails


class ToolError(AssertionError):
    """A tool exited non-zero; the message has its command line and transcript."""


def require(tool: str) -> str:
    """The full path of ``tool``, or fail the test: never skip for a missing peer."""
    path = shutil.which(tool) or shutil.which(tool, path=SBIN)
    if path is None:
        pytest.fail(f"{tool} is not installed: run tests/peers/install.sh (as root)")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for programs that cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Block until something accepts connections on host:port; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


def _run(
    argv: list[str], *, stdin: bytes | None, check: bool, timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{' '.join(argv)}: no end after {timeout} s\n{exc.output!r}") from None
    result = subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )
    if check and result.returncode != 0:
        raise ToolError(
            f"{' '.join(argv)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


def swaks(
    host: str,
    port: int,
    *,
    to: str | Sequence[str],
    sender: str = "swaks@example.com",
    data: bytes | None = None,
    raw: bool = False,
    helo: str = "swaks.test",
    tls: bool = False,
    tls_on_connect: bool = False,
    tls_verify: Path | None = None,
    pipeline: bool = False,
    auth: tuple[str, str] | None = None,
    extra: Sequence[str] = (),
    check: bool = True,
    timeout: float = TOOL_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Send one message with swaks.

    ``data``: the message, fed on stdin (``--data -``); it arrives as given (bare LF turned
    into CRLF, a last line ending added if missing). swaks dot-stuffs, and always adds a CRLF
    of its own before the final ".": this wrapper takes one line ending off the end first.
    With ``raw`` swaks sends exactly the bytes given (``--no-data-fixup``: the caller stuffs
    dots and ends with ``\\r\\n.\\r\\n``). None sends swaks's default test message.
    ``tls``: STARTTLS, required. ``tls_on_connect``: implicit TLS (SMTPS). ``tls_verify``: a
    CA file the server's certificate must chain to (by default swaks checks nothing).
    ``auth``: (user, password), any mechanism the server offers.
    """
    recipients = [to] if isinstance(to, str) else list(to)
    argv = [
        require("swaks"),
        "--server",
        f"{host}:{port}",
        "--from",
        sender,
        "--to",
        ",".join(recipients),
        "--helo",
        helo,
        "--timeout",
        "30",
    ]
    if data is not None:
        argv += ["--data", "-"]
        if not raw and data.endswith(b"\n"):
            data = data[: -2 if data.endswith(b"\r\n") else -1]
    if raw:
        argv.append("--no-data-fixup")
    if tls:
        argv.append("--tls")
    if tls_on_connect:
        argv.append("--tls-on-connect")
    if tls_verify is not None:
        argv += ["--tls-verify", "--tls-ca-path", str(tls_verify)]
    if pipeline:
        argv.append("--pipeline")
    if auth is not None:
        argv += ["--auth", "--auth-user", auth[0], "--auth-password", auth[1]]
    argv += list(extra)
    return _run(argv, stdin=data, check=check, timeout=timeout)


def smtp_source(
    host: str,
    port: int,
    *,
    sessions: int = 1,
    messages: int = 1,
    size: int | None = None,
    sender: str = "source@example.com",
    to: str = "sink@example.com",
    recipients_per_message: int = 1,
    subject: str | None = None,
    reuse_connection: bool = True,
    helo: str = "smtp-source.test",
    message_file: Path | None = None,
    counter: bool = True,
    extra: Sequence[str] = (),
    check: bool = True,
    timeout: float = TOOL_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Send ``messages`` messages over ``sessions`` parallel SMTP sessions with smtp-source.

    ``size``: bytes of generated payload (lines of "La de da de da ..."; headers extra).
    ``recipients_per_message`` > 1 sends RCPTs "1to", "2to", ... (smtp-source prepends a
    number). ``reuse_connection`` (``-d``) keeps each session's connection for its next
    message; without it every message gets a connection of its own. ``message_file``
    (``-F``) sends that header and body instead. ``counter`` (``-c``) prints a count per
    message. smtp-source aborts on any unexpected reply unless ``-A`` is in ``extra``.
    """
    argv = [
        require("smtp-source"),
        "-4",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-f",
        sender,
        "-t",
        to,
        "-r",
        str(recipients_per_message),
        "-M",
        helo,
    ]
    if size is not None:
        argv += ["-l", str(size)]
    if subject is not None:
        argv += ["-S", subject]
    if reuse_connection:
        argv.append("-d")
    if message_file is not None:
        argv += ["-F", str(message_file)]
    if counter:
        argv.append("-c")
    argv += [*extra, f"inet:{host}:{port}"]
    return _run(argv, stdin=None, check=check, timeout=timeout)
