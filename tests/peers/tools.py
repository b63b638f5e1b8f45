"""Thin wrappers around the mail test tools Debian ships, run against host:port:

- swaks 20201014 (Debian 12): one message per run; STARTTLS (``tls``), implicit TLS
  (``tls_on_connect``), PIPELINING (``pipeline``), AUTH, XCLIENT. It has no BDAT/CHUNKING
  (that came in swaks 20240103), so BDAT interop needs another client.
- smtp-source (Postfix): many messages over parallel sessions, no PIPELINING, no TLS.
- fetchmail 6.4: one poll of one POP3 mailbox (STLS or implicit TLS), every message handed
  to an MDA that files it, so the caller gets the bytes fetchmail delivered.

swaks and smtp-source return the finished ``subprocess.CompletedProcess`` with the transcript in
``stdout`` and ``stderr``; with ``check=True`` (the default) a non-zero exit raises
:class:`ToolError` carrying that transcript. fetchmail returns a :class:`Fetched`. They block:
from trio, call them with ``trio.to_thread.run_sync``.

A tool that is missing FAILS the test (``pytest.fail``), it never skips: the suite is only
green when the peers really ran. `make test` installs them all (tools/system-packages.sh).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import pytest

__all__ = [
    "Fetched",
    "ToolError",
    "fetchmail",
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
        pytest.fail(
            f"{tool} is not installed: run `make test`, which installs every test peer "
            "(or tests/peers/install.sh alone, as root or with sudo)"
        )
    return path


def live_processes(what: Literal["cmdline", "environ"] = "cmdline") -> Iterator[tuple[int, bytes]]:
    """Every live process with its command line (or environment): NUL-separated bytes from
    /proc; processes gone meanwhile (or zombies, for the environment) are skipped."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), (entry / what).read_bytes()
        except OSError:  # gone
            continue


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


# The MDA fetchmail hands each message to (on standard input): it files the bytes exactly as
# given, under a name that sorts in delivery order (fetchmail runs one MDA at a time).
_MDA_SCRIPT = """\
import os, sys, time
data = sys.stdin.buffer.read()
name = "%020d.%d" % (time.time_ns(), os.getpid())
folder = sys.argv[1]
with open(os.path.join(folder, "." + name), "wb") as out:
    out.write(data)
os.rename(os.path.join(folder, "." + name), os.path.join(folder, name + ".eml"))
"""


class Fetched(NamedTuple):
    """What one fetchmail run delivered, in the server's order, and its verbose log."""

    messages: list[bytes]
    log: str
    status: int  # 0: mail was delivered; 1: there was none (fetchmail(1), EXIT CODES)


def fetchmail(
    host: str,
    port: int,
    *,
    user: str,
    password: str,
    ca_file: Path,
    tmp_dir: Path,
    tls: Literal["implicit", "starttls"] = "implicit",
    server_name: str = "localhost",
    keep: bool = False,
    fetchall: bool = True,
    exact: bool = True,
    rc_lines: Sequence[str] = (),
    extra: Sequence[str] = (),
    check: bool = True,
    timeout: float = TOOL_TIMEOUT,
) -> Fetched:
    """Poll one POP3 mailbox once with fetchmail; the messages it delivered, in order.

    Every file lives in a fresh folder under ``tmp_dir`` (the rcfile, mode 0600 as fetchmail
    demands; the pid file; the delivered messages), ``HOME`` and ``FETCHMAILHOME`` point
    there, and the UID list is ``tmp_dir / "fetchmail.ids"`` (shared by the runs of one
    ``tmp_dir``, as ~/.fetchids is): nothing under ~ or /var/run is read or written, and
    runs in different ``tmp_dir`` may overlap.

    ``tls``: ``implicit`` (``ssl``, TLS from the first byte) or ``starttls`` (STLS, which
    ``sslproto 'tls1.2+'`` without ``ssl`` makes mandatory). Either way TLS 1.2 or later and
    the certificate checked (``sslcertck``) against ``ca_file`` and ``server_name``
    (``sslcommonname``: ``host`` is usually an IP address, which fetchmail cannot match
    against a certificate). fetchmail also wants a subject CommonName in the certificate,
    subjectAltNames alone are not enough. ``keep``: leave the messages on the server
    (default: delete each after delivery, i.e. DELE then QUIT). ``fetchall``: all messages,
    not only those the UID list has not seen. ``rc_lines`` are added to the poll entry,
    ``extra`` to the command line.

    ``exact`` (default) makes delivery byte-exact: ``set invisible`` (no ``Received:`` of
    its own), ``no rewrite`` (To/From/Cc/Bcc/Reply-To left alone) and ``no stripcr`` (CRLF
    kept; with an MDA fetchmail strips CRs by default). Each message then arrives as the
    server sent it, dot-unstuffed, with these exceptions of fetchmail's own (6.4.37):

    - a line longer than about 8,190 octets is corrupted: at every 8,192-octet buffer
      boundary fetchmail inserts two stray octets (a NUL and one more) and a line end.
      RFC 5322 allows 998; keep test lines short;
    - a message without a blank line after its header gets one (CRLF) at the end;
    - an mbox ``From `` line at the very start is dropped;
    - a message whose first line is not a header field is refused ("incorrect header line
      found", left on the server) unless ``bad-header accept`` is among ``rc_lines``.

    ``exact=False`` keeps fetchmail's defaults for comparison: a ``Received: from HOST
    [ADDR]`` field of three lines (``by <hostname> with POP3 (fetchmail-6.4.37)``, ``for
    <root@localhost> (single-drop); <date>``) in front, unqualified addresses in address
    fields qualified with ``@HOST``, and every line end LF.

    Exit status 0 (mail) and 1 (no mail) are success; anything else raises
    :class:`ToolError` with the log, unless ``check=False``.
    """
    tmp_dir = Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="fetchmail-", dir=tmp_dir))
    delivered = run / "delivered"
    delivered.mkdir()
    mda = run / "mda.py"
    mda.write_text(_MDA_SCRIPT)
    for value in (user, password, str(ca_file), server_name, str(run)):
        # rcfile strings are double-quoted with backslash escapes (a "%" is plain text there,
        # as in a proxy login "user%host%mailbox") ...
        if any(c in value for c in '"\\\n'):
            raise ValueError(f"fetchmail wrapper: {value!r} needs quoting it does not do")
    if "%" in str(run):  # ... but fetchmail expands % sequences in the mda command.
        raise ValueError(f"fetchmail wrapper: {run} holds a %")
    # The MDA string goes to /bin/sh -c.
    mda_command = shlex.join([sys.executable, "-I", "-S", str(mda), str(delivered)])
    options = [
        "fetchall" if fetchall else "no fetchall",
        "keep" if keep else "no keep",
        *(["no rewrite", "no stripcr"] if exact else []),
        *rc_lines,
    ]
    local = pwd.getpwuid(os.getuid()).pw_name  # single-drop: every message goes to the MDA
    rcfile = run / "fetchmailrc"
    rcfile.write_text(
        ("set invisible\n" if exact else "")
        + f"poll {host} service {port} protocol pop3 timeout 30\n"
        + f'  user "{user}" there with password "{password}" is "{local}" here\n'
        + ("  ssl\n" if tls == "implicit" else "")
        + f'  sslproto "tls1.2+" sslcertck sslcertfile "{ca_file}"'
        + f' sslcommonname "{server_name}"\n'
        + f'  mda "{mda_command}"\n'
        + "".join(f"  {option}\n" for option in options)
    )
    rcfile.chmod(0o600)  # fetchmail refuses an rcfile others may read
    argv = [
        require("fetchmail"),
        "--verbose",
        "--nodetach",
        "--nosyslog",
        "--fetchmailrc",
        str(rcfile),
        "--idfile",
        str(tmp_dir / "fetchmail.ids"),
        "--pidfile",
        str(run / "fetchmail.pid"),
        *extra,
    ]
    env = {
        "PATH": os.environ.get("PATH", SBIN),
        "HOME": str(run),
        "FETCHMAILHOME": str(run),
        "LC_ALL": "C",
    }
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{shlex.join(argv)}: no end after {timeout} s\n{exc.output!r}") from None
    log = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    if check and done.returncode not in (0, 1):
        raise ToolError(
            f"{shlex.join(argv)} exited {done.returncode}\n--- rcfile ---\n"
            + rcfile.read_text().replace(f'"{password}"', '"*"')
            + f"--- log ---\n{log}"
        )
    messages = [path.read_bytes() for path in sorted(delivered.glob("*.eml"))]
    return Fetched(messages, log, done.returncode)
