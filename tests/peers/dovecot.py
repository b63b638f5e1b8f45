"""A private Dovecot 2.3: a reference POP3 server serving Maildirs, for the gateway's POP3 work
(interop, and the benchmark in tools/bench/pop3_bench.py).

Theory of operation. Everything the instance owns lives in one folder: ``dovecot.conf``
(written from scratch; nothing of /etc/dovecot is read), ``passwd`` (passdb and userdb, one
passwd-file), the TLS key and certificate, ``run/`` (its ``base_dir``: sockets, master.pid),
``state/``, ``home/USER/Maildir`` and the log file ``dovecot.log``. ``dovecot -c CONF``
binds the listeners, daemonizes and returns; its master (root) forks the other processes,
each named ``dovecot-<instance_name>/<service>`` in its command line (the instance name is
unique), which is how they are found and killed after a SIGTERM to the master, without
touching anything else on the machine. Any number of instances coexist, and no system-wide
Dovecot is needed (tests/peers/install.sh leaves none configured or running).

POP3 only: plain with STLS on ``pop3_port``, implicit TLS on ``pop3s_port``, on loopback.
``disable_plaintext_auth = yes`` and ``ssl = required``: credentials are refused until the
connection is TLS. Dovecot counts a connection whose remote address equals its local
address as secure (login-common/client-common.c: "localhost connections are always
secured"), so on 127.0.0.1 a client connecting from 127.0.0.1 could log in in the clear.
The instance therefore listens on 127.0.0.2 by default (the kernel picks 127.0.0.1 as the
source of a connection to it, see ``ip route get 127.0.0.2``), where the rule bites as it
would on a real server. Its certificate names localhost, 127.0.0.1 and 127.0.0.2.

Processes: the master runs as root, internal services as ``dovecot``, login processes as
``dovenull`` (users Debian's dovecot-core creates), and the mail processes as ``nobody``:
Dovecot refuses a mail user with UID 0 ("invalid UID '0'"). ``pop3-login`` terminates TLS
and stays for the whole session, relaying plaintext to the ``pop3`` process over a socket
pair.

Maildir and line ends. Maildir stores messages with LF line ends, and Dovecot sends every
LF not already preceded by CR as CRLF (and ends a message that lacks a final line end with
CRLF before the terminating "."). :meth:`DovecotInstance.deliver` therefore stores the
message with every CRLF turned into LF; a message whose lines all end in CRLF comes back from
RETR byte for byte (after dot-unstuffing); a bare LF comes back as CRLF. :func:`pop3_octets`
is the exact rule.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio
import trustme

from .postfix import _reachable_by
from .tools import free_port, live_processes, require, wait_for_port

__all__ = [
    "DovecotError",
    "DovecotInstance",
    "open_private_dovecot",
    "pop3_octets",
    "private_dovecot",
    "write_server_certificate",
]

HOST = "127.0.0.2"  # see the module docstring: on 127.0.0.1 loopback counts as secure
INTERNAL_USER = "dovecot"  # default_internal_user: auth, anvil, stats
LOGIN_USER = "dovenull"  # default_login_user: the (chrooted) login processes
MAIL_USER = "nobody"  # owns the Maildirs; Dovecot refuses mail access as root
AUTH_SOCKET = "auth-smtpd"  # in base_dir; the name matters, see _auth_listener
LOG_TAIL = 6000  # characters of the log an error carries
START_TIMEOUT = 15.0
STOP_GRACE = 2.0  # seconds from SIGTERM to SIGKILL
LOG_SETTLE = 0.1  # seconds the log process gets once only it and the master are left
STOP_TIMEOUT = 10.0

_deliveries = itertools.count()  # the Q part of Maildir names: unique within this process
_BARE_LF = re.compile(rb"(?<!\r)\n")


_clock_lock = threading.Lock()
_last_micros = 0


def _unique_micros() -> int:
    """Microseconds since the epoch, strictly increasing from call to call."""
    global _last_micros  # noqa: PLW0603 - one clock for every instance in the process
    with _clock_lock:
        _last_micros = max(time.time_ns() // 1000, _last_micros + 1)
        return _last_micros


def _delivery_order(path: Path) -> tuple[int, int, str]:
    """Dovecot's maildir_filename_sort_cmp: seconds, microseconds, then the name."""
    seconds, _, rest = path.name.partition(".")
    micros = rest[1:].split("P", 1)[0] if rest.startswith("M") else ""
    return (
        int(seconds) if seconds.isdigit() else 0,
        int(micros) if micros.isdigit() else 0,
        path.name,
    )


def pop3_octets(message: bytes) -> bytes:
    """The octets a POP3 RETR of this instance sends for ``message`` after
    :meth:`DovecotInstance.deliver` stored it: dot-unstuffed, up to and including the CRLF
    before the terminating ``.`` line.

    deliver() stores every CRLF as LF (the Maildir convention), and Dovecot sends every LF
    that is not already preceded by CR as CRLF, and adds CRLF when the stored message does
    not end in LF. So a message whose every line ends in CRLF comes back byte for byte; a
    bare LF comes back as CRLF; a bare CR stays; CR CR LF comes back as CR LF (stored as CR
    LF, which Dovecot sends as it is); a missing final line end is added. LIST and STAT
    count the same octets, less that added line end."""
    sent = _BARE_LF.sub(b"\r\n", message.replace(b"\r\n", b"\n"))
    return sent if sent.endswith(b"\n") else sent + b"\r\n"


class DovecotError(RuntimeError):
    """Something the private Dovecot did not do; the message carries its log."""


@dataclass(frozen=True)
class DovecotInstance:
    """A running private Dovecot. Its methods are sync and quick (file system only)."""

    root: Path
    config_file: Path
    log_file: Path
    ca_file: Path  # the CA certificate that the instance's certificate chains to
    instance_name: str
    host: str
    pop3_port: int  # plain, STLS offered and required before credentials
    pop3s_port: int  # implicit TLS
    users: Mapping[str, str]  # user name -> password
    mail_uid: int
    mail_gid: int
    auth_socket: Path | None = None  # the auth-client socket for an MTA, if asked for

    # -- mail in ---------------------------------------------------------------------------

    def maildir(self, user: str) -> Path:
        """The user's Maildir (``cur/``, ``new/``, ``tmp/`` exist from the start)."""
        if user not in self.users:
            raise KeyError(f"no user {user!r} in this Dovecot (users: {sorted(self.users)})")
        return self.root / "home" / user / "Maildir"

    def deliver(self, user: str, message: bytes) -> Path:
        """Put one message into the user's Maildir as an MDA does; the path in ``new/``.

        Maildir (https://cr.yp.to/proto/maildir.html): the file is written and fsynced in
        ``tmp/`` under a unique name (``<seconds>.M<µs>P<pid>Q<n>.<host>``), then renamed
        into ``new/``, where Dovecot picks it up; owner and mode are the mail user's. Lines
        are stored with LF ends: every CRLF becomes LF, nothing else changes (a bare CR or
        LF stays, 8-bit bytes stay). The name carries ``,S=`` (octets in the file) and
        ``,W=`` (octets as POP3 sends them), as Dovecot's own deliveries do; LIST and STAT
        read W from the name without opening the file.

        Dovecot numbers new messages in the order of the time in their names (seconds, then
        microseconds; maildir_filename_sort_cmp), and that time strictly increases from
        one delivery to the next in this process: POP3 lists messages in delivery order.

        What a POP3 RETR then sends is :func:`pop3_octets` of the message (dot-stuffed on
        the wire): identical for a message whose every line ends in CRLF."""
        maildir = self.maildir(user)
        stored = message.replace(b"\r\n", b"\n")
        virtual = len(_BARE_LF.sub(b"\r\n", stored))
        seconds, micros = divmod(_unique_micros(), 1_000_000)
        host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        base = f"{seconds}.M{micros}P{os.getpid()}Q{next(_deliveries)}.{host}"
        name = f"{base},S={len(stored)},W={virtual}"
        temporary = maildir / "tmp" / base
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(stored)
            while view:
                view = view[os.write(fd, view) :]
            os.fchown(fd, self.mail_uid, self.mail_gid)
            os.fsync(fd)
        finally:
            os.close(fd)
        final = maildir / "new" / name
        os.rename(temporary, final)
        return final

    def stored(self, user: str) -> list[Path]:
        """Every message file in the user's Maildir (``new/`` and ``cur/``; Dovecot moves
        them from one to the other) in POP3's order: what POP3 has not deleted yet."""
        maildir = self.maildir(user)
        files = [p for sub in ("new", "cur") for p in (maildir / sub).iterdir() if p.is_file()]
        return sorted(files, key=_delivery_order)

    # -- what happened ---------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it contains ``text``, or DovecotError. Processes log through the
        instance's log process, so a line may land a moment after the client saw the reply
        (a ``pop3`` process logs ``Logged out ... del=N/M`` after answering QUIT)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_text()):
            if time.monotonic() >= deadline:
                raise DovecotError(self._explain(f"{text!r} not logged after {timeout} s"))
            time.sleep(0.02)
        return log

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self) -> list[int]:
        """Every live process of this instance: the master (``dovecot -c CONF``) and its
        children, each titled ``dovecot-<instance_name>/<service>`` by Dovecot."""
        return [pid for pid, _ in self._titles()]

    def processes_named(self, service: str) -> list[int]:
        """The live processes of one service (``pop3``, ``pop3-login``, ``auth``, ``log``,
        ...); ``master`` for the master."""
        return [pid for pid, name in self._titles() if name == service]

    def _titles(self) -> list[tuple[int, str]]:
        title = f"dovecot-{self.instance_name}/".encode()
        master = f"-c\0{self.config_file}\0".encode()
        found = []
        for pid, cmdline in live_processes():
            if cmdline.startswith(title):
                service = cmdline[len(title) :].split(b"\0")[0].split(b" ")[0]
                found.append((pid, service.decode(errors="replace")))
            elif master in cmdline:
                found.append((pid, "master"))
        return found

    def _explain(self, what: str) -> str:
        tail = self.log_text()[-LOG_TAIL:]
        return f"private Dovecot {self.config_file}: {what}\n--- log tail ---\n{tail}"


@contextmanager
def private_dovecot(
    tmp_dir: Path,
    *,
    users: Mapping[str, str] | None = None,
    host: str = HOST,
    pop3_port: int | None = None,
    pop3s_port: int | None = None,
    ca: trustme.CA | None = None,
    settings: Mapping[str, str] | None = None,
    name: str = "dovecot",
    auth_socket_user: str | None = None,
) -> Iterator[DovecotInstance]:
    """Run a private Dovecot (POP3 only) in ``tmp_dir / name`` until the block ends.

    ``users``: user name -> password (default ``{"alice": "password"}``); each gets an empty
    Maildir. Ports None pick free ones. ``ca``: the trustme CA to issue the instance's
    certificate from (default: a new one); ``ca_file`` is written either way. ``settings``
    are extra top-level dovecot.conf lines (``name = value``), applied last. ``name`` lets
    several instances share a ``tmp_dir``. ``auth_socket_user``: a user (``postfix``) for
    whom the auth service also listens on ``auth_socket`` (Dovecot's auth-client protocol,
    what Postfix's ``smtpd_sasl_type = dovecot`` speaks), mode 0600, owned by that user; the
    passdb there is the POP3 one. Stopping is SIGTERM to the master, then SIGKILL
    for anything of this instance still alive after STOP_GRACE (see :func:`_stop`), also
    when the block raises.
    """
    require("dovecot")
    for user in (INTERNAL_USER, LOGIN_USER, MAIL_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise DovecotError(
                f"user {user!r} does not exist: run `make test` (it installs the test peers, "
                "dovecot-core among them)"
            ) from None
    tmp_dir = Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    if all(_reachable_by(user, tmp_dir) for user in (INTERNAL_USER, MAIL_USER)):
        root = tmp_dir / name
        root.mkdir()
        cleanup = False
    else:
        # auth (as dovecot) reads the passwd-file and pop3 (as nobody) opens the Maildir by
        # absolute path; pytest's tmp_path sits under a 0700 folder. Live where they can.
        root = Path(tempfile.mkdtemp(prefix=f"peer-{name}-", dir="/tmp"))
        (tmp_dir / name).symlink_to(root)
        cleanup = True
    try:
        root.chmod(0o755)
        instance = _configure(
            root,
            users=users if users is not None else {"alice": "password"},
            host=host,
            pop3_port=pop3_port or free_port(host),
            pop3s_port=pop3s_port or free_port(host),
            ca=ca or trustme.CA(),
            settings=settings or {},
            auth_socket_user=auth_socket_user,
        )
        try:
            _start(instance)
            yield instance
        finally:
            _stop(instance)
    finally:
        if cleanup:
            # Keep the log where the test's other files are, for a post-mortem.
            with suppress(OSError):
                (tmp_dir / name).unlink()
                (tmp_dir / name).mkdir()
                shutil.copy(root / "dovecot.log", tmp_dir / name / "dovecot.log")
            shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def open_private_dovecot(
    tmp_dir: Path,
    *,
    users: Mapping[str, str] | None = None,
    host: str = HOST,
    pop3_port: int | None = None,
    pop3s_port: int | None = None,
    ca: trustme.CA | None = None,
    settings: Mapping[str, str] | None = None,
    name: str = "dovecot",
    auth_socket_user: str | None = None,
) -> AsyncIterator[DovecotInstance]:
    """:func:`private_dovecot` for trio: start and stop run in a worker thread."""
    manager = private_dovecot(
        tmp_dir,
        users=users,
        host=host,
        pop3_port=pop3_port,
        pop3s_port=pop3s_port,
        ca=ca,
        settings=settings,
        name=name,
        auth_socket_user=auth_socket_user,
    )
    instance = await trio.to_thread.run_sync(manager.__enter__)
    try:
        yield instance
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(manager.__exit__, None, None, None)


def _configure(
    root: Path,
    *,
    users: Mapping[str, str],
    host: str,
    pop3_port: int,
    pop3s_port: int,
    ca: trustme.CA,
    settings: Mapping[str, str],
    auth_socket_user: str | None = None,
) -> DovecotInstance:
    for user, password in users.items():
        if not user or any(c in user + password for c in ":\n\r\0") or " " in user:
            raise ValueError(f"user {user!r}: no ':', white space or control characters")
    mail = pwd.getpwnam(MAIL_USER)
    internal = pwd.getpwnam(INTERNAL_USER)
    instance = DovecotInstance(
        root=root,
        config_file=root / "dovecot.conf",
        log_file=root / "dovecot.log",
        ca_file=root / "ca.pem",
        instance_name=f"peer-{pop3_port}-{secrets.token_hex(3)}",
        host=host,
        pop3_port=pop3_port,
        pop3s_port=pop3s_port,
        users=dict(users),
        mail_uid=mail.pw_uid,
        mail_gid=mail.pw_gid,
        auth_socket=root / "run" / AUTH_SOCKET if auth_socket_user else None,
    )
    # Read by the config process, as root.
    write_server_certificate(ca, host, ca_file=instance.ca_file, folder=root)
    # passdb and userdb in one passwd-file: user:{PLAIN}password:uid:gid::home::
    home = root / "home"
    home.mkdir(mode=0o755)
    lines = []
    for user, password in users.items():
        maildir = home / user / "Maildir"
        for folder in (home / user, maildir, *(maildir / sub for sub in ("cur", "new", "tmp"))):
            folder.mkdir(mode=0o700)
            os.chown(folder, mail.pw_uid, mail.pw_gid)
        lines.append(f"{user}:{{PLAIN}}{password}:{mail.pw_uid}:{mail.pw_gid}::{home / user}::\n")
    passwd = root / "passwd"
    passwd.write_text("".join(lines))
    os.chown(passwd, 0, internal.pw_gid)  # the auth process reads it, as dovecot
    passwd.chmod(0o640)
    extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
    instance.config_file.write_text(
        f"""# A private test instance (tests/peers/dovecot.py); nothing of /etc/dovecot is read.
instance_name = {instance.instance_name}
base_dir = {root / "run"}
state_dir = {root / "state"}
log_path = {instance.log_file}
log_timestamp = "%Y-%m-%d %H:%M:%S "
protocols = pop3
listen = {host}
default_internal_user = {INTERNAL_USER}
default_login_user = {LOGIN_USER}
ssl = required
ssl_cert = <{root / "cert.pem"}
ssl_key = <{root / "key.pem"}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain
auth_verbose = yes
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
{_auth_listener(auth_socket_user)}service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    address = {host}
    port = {pop3s_port}
    ssl = yes
  }}
}}
{extra}"""
    )
    return instance


def _auth_listener(user: str | None) -> str:
    """The auth service's extra listener for an MTA. Dovecot's auth process picks a
    listener's protocol from the word after the last "-" of its file name
    (auth/main.c, auth_socket_type_get): ``login`` (for login processes, which Dovecot
    trusts more), ``master``, ``userdb``, ``postmap``, ``token``, ``tokenlogin``; anything
    else, ``auth-smtpd`` here, speaks the auth-client protocol that Postfix's
    ``smtpd_sasl_type = dovecot`` uses."""
    if user is None:
        return ""
    return f"""service auth {{
  unix_listener {AUTH_SOCKET} {{
    mode = 0600
    user = {user}
  }}
}}
"""


def write_server_certificate(ca: trustme.CA, host: str, *, ca_file: Path, folder: Path) -> None:
    """TLS files for a server on ``host``: ``ca_file`` (the CA to trust), ``folder /
    "cert.pem"`` (the chain, leaf first) and ``folder / "key.pem"`` (mode 0600). The
    certificate names localhost, 127.0.0.1 and ``host``, with CommonName localhost
    (fetchmail insists on a CommonName besides the subjectAltNames)."""
    leaf = ca.issue_cert("localhost", "127.0.0.1", host, common_name="localhost")
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    (folder / "key.pem").chmod(0o600)
    with (folder / "cert.pem").open("wb") as chain:
        for blob in leaf.cert_chain_pems:
            chain.write(blob.bytes())


def _start(instance: DovecotInstance) -> None:
    # The master binds every listener before it daemonizes: a port in use makes ``dovecot``
    # exit non-zero with the reason on stderr ("Fatal: service(pop3-login): listen(...)").
    # Its output goes to a file, not a pipe: the daemon keeps the descriptors it was given,
    # and a pipe would never see EOF.
    with tempfile.TemporaryFile() as output:
        code = subprocess.run(
            [require("dovecot"), "-c", str(instance.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=START_TIMEOUT,
        ).returncode
        output.seek(0)
        said = output.read().decode(errors="replace")
    if code != 0:
        raise DovecotError(instance._explain(f"dovecot exited {code}: {said}"))
    try:
        for port in (instance.pop3_port, instance.pop3s_port):
            wait_for_port(instance.host, port, START_TIMEOUT)
    except TimeoutError as exc:
        raise DovecotError(instance._explain(str(exc))) from None


def _stop(instance: DovecotInstance) -> None:
    """SIGTERM to the master (what ``doveadm stop`` does; it passes the signal on), then
    SIGKILL for what is left after STOP_GRACE: a login process still setting up ignores
    SIGTERM for 5 s. Once only the master and the log process are left (they linger a
    second after the rest are gone), they get LOG_SETTLE for the last log lines and are
    killed."""
    master = instance.master_pid()
    if master is not None and master in instance.processes():
        with suppress(ProcessLookupError):
            os.kill(master, signal.SIGTERM)
    started = time.monotonic()
    alone_since: float | None = None
    while left := instance.processes():
        now = time.monotonic()
        if now - started > STOP_GRACE or (alone_since and now - alone_since > LOG_SETTLE):
            for pid in left:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if now - started > STOP_TIMEOUT:
                raise DovecotError(instance._explain(f"processes {left} survive SIGKILL"))
        if alone_since is None and {name for _, name in instance._titles()} <= {"master", "log"}:
            alone_since = now
        time.sleep(0.02)
