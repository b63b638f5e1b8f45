"""A private Postfix instance: a real MTA for the gateway to receive mail from (Postfix relays
everything it is given to one next hop, as a journaling MTA does) or, later, to send to.

Theory of operation. Everything the instance owns lives in one folder: ``etc/`` (main.cf and
master.cf, built with ``postconf -e`` and ``postconf -M -e``), ``queue/``, ``data/`` and the log
file ``maillog`` (written by the instance's own ``postlogd``, so nothing depends on syslog).
``postfix -c etc start`` runs a master daemon whose every child carries ``MAIL_CONFIG=etc`` in
its environment; that is how leftovers are found and killed after ``postfix stop``, without
touching anything else on the machine. Any number of instances coexist, and no system-wide
Postfix is needed (tests/peers/install.sh leaves none configured or running).

The instance listens for SMTP on 127.0.0.1:``listen_port`` only, accepts anything from
127.0.0.0/8, delivers nothing locally (``mydestination`` is empty) and relays every message to
``[relay_host]:relay_port`` with ``smtp_tls_security_level`` = ``tls``. Retries come every
second or two, so a test that takes its next hop down and up again waits seconds, not minutes.
With ``deliver="defer"`` it is a sink instead (a benchmark's yardstick): smtpd accepts into the
queue as always, the queue manager moves every message to the deferred queue once, and there it
stays; nothing is delivered, retried or looked up.

Postfix's daemons drop to the ``postfix`` user, which must be able to reach the queue and data
folders by their absolute paths: pytest's ``tmp_path`` sits under a 0700 folder, so when
``tmp_dir`` is not reachable the instance's folder is made under /tmp instead and linked from
``tmp_dir`` (see :func:`private_postfix`).
"""

from __future__ import annotations

import json
import os
import pty
import pwd
import select
import shlex
import shutil
import signal
import smtplib
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from .tools import free_port, live_processes, require, wait_for_port

__all__ = [
    "PostfixError",
    "PostfixInstance",
    "QueueEntry",
    "open_private_postfix",
    "private_postfix",
]

TlsLevel = Literal["none", "may", "encrypt", "verify", "secure"]
Deliver = Literal["relay", "defer"]
QueueEntry = dict[str, object]  # one line of ``postqueue -j``: see postqueue(1)

MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"
LOG_TAIL = 6000  # characters of the log an error carries
START_TIMEOUT = 15.0
COMMAND_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0

# master.cf, written with ``postconf -M -e``. Every service runs without a chroot (the private
# queue has no chroot environment: /etc/services, resolv.conf and the like are missing there).
# The columns: type private unpriv chroot wakeup maxproc command.
_MASTER_SERVICES = (
    ("pickup", "unix", "n - n 60 1 pickup"),
    ("cleanup", "unix", "n - n - 0 cleanup"),
    ("qmgr", "unix", "n - n 300 1 qmgr"),
    ("tlsmgr", "unix", "- - n 1000? 1 tlsmgr"),
    ("rewrite", "unix", "- - n - - trivial-rewrite"),
    ("bounce", "unix", "- - n - 0 bounce"),
    ("defer", "unix", "- - n - 0 bounce"),
    ("trace", "unix", "- - n - 0 bounce"),
    ("verify", "unix", "- - n - 1 verify"),
    ("flush", "unix", "n - n 1000? 0 flush"),
    ("proxymap", "unix", "- - n - - proxymap"),
    ("proxywrite", "unix", "- - n - 1 proxymap"),
    ("smtp", "unix", "- - n - - smtp"),
    ("relay", "unix", "- - n - - smtp"),
    ("showq", "unix", "n - n - - showq"),
    ("error", "unix", "- - n - - error"),
    ("retry", "unix", "- - n - - error"),
    ("discard", "unix", "- - n - - discard"),
    ("local", "unix", "- n n - - local"),
    ("virtual", "unix", "- n n - - virtual"),
    ("lmtp", "unix", "- - n - - lmtp"),
    ("anvil", "unix", "- - n - 1 anvil"),
    ("scache", "unix", "- - n - 1 scache"),
    # postlogd writes maillog_file; without it the instance logs nowhere readable.
    ("postlog", "unix-dgram", "n - n - 1 postlogd"),
)


class PostfixError(RuntimeError):
    """Something the private Postfix did not do; the message carries its log."""


@dataclass(frozen=True)
class PostfixInstance:
    """A running private Postfix. The blocking methods are sync: from trio, call them with
    ``trio.to_thread.run_sync``."""

    root: Path
    config_dir: Path
    queue_dir: Path
    data_dir: Path
    log_file: Path
    port: int
    relay: tuple[str, int] | None  # None: no relayhost (a sink, or a submission server)
    host: str = "127.0.0.1"

    # -- configuration ---------------------------------------------------------------------

    def postconf(self, *settings: str) -> None:
        """Change main.cf (``name=value`` each) and reload, as an operator would."""
        _run(["postconf", "-c", str(self.config_dir), "-e", *settings], self)
        _age(self.config_dir)
        self.reload()

    def postconf_value(self, name: str) -> str:
        out = _run(["postconf", "-c", str(self.config_dir), "-h", name], self)
        return out.strip()

    def reload(self) -> None:
        _run(["postfix", "-c", str(self.config_dir), "reload"], self)

    # -- mail in ---------------------------------------------------------------------------

    def send(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        """Submit one message over SMTP to the instance's own smtpd, unchanged (the message's
        lines must end in CRLF; smtplib dot-stuffs)."""
        try:
            with smtplib.SMTP(self.host, self.port, timeout=30) as client:
                refused = client.sendmail(sender, list(recipients), message)
        except (OSError, smtplib.SMTPException) as exc:
            raise PostfixError(self._explain(f"SMTP submission failed: {exc!r}")) from exc
        if refused:
            raise PostfixError(self._explain(f"recipients refused: {refused}"))

    def sendmail(self, sender: str, recipients: Sequence[str], message: bytes) -> None:
        """Submit one message through Postfix's sendmail(1) and the maildrop queue: the
        local-submission path (pickup, not smtpd). Lines may end in LF or CRLF."""
        done = subprocess.run(
            ["sendmail", "-C", str(self.config_dir), "-i", "-f", sender, "--", *recipients],
            input=message,
            capture_output=True,
            check=False,
            timeout=30,
        )
        if done.returncode != 0:
            why = (done.stdout + done.stderr).decode(errors="replace")
            raise PostfixError(self._explain(f"sendmail exited {done.returncode}: {why}"))

    # -- the queue -------------------------------------------------------------------------

    def queue(self) -> list[QueueEntry]:
        """Every message still queued (maildrop, incoming, active, deferred, hold)."""
        out = _run(["postqueue", "-c", str(self.config_dir), "-j"], self)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue_ids_deferred(self) -> list[str]:
        return [str(e["queue_id"]) for e in self.queue() if e.get("queue_name") == "deferred"]

    def flush(self) -> None:
        """Retry every deferred message now (``postqueue -f``)."""
        _run(["postqueue", "-c", str(self.config_dir), "-f"], self)

    def wait_until_queue_settled(self, timeout: float) -> list[QueueEntry]:
        """Block until no message is on its way (none in maildrop, incoming or active), then
        return the queue; PostfixError with the log otherwise. For a sink (``deliver="defer"``)
        that is every message accepted, each once, all deferred.

        ``postqueue -j`` scans incoming, then active, then deferred: a message moving from
        active to deferred during the scan is listed twice, one moving from incoming to
        active may be listed in both or neither. With nothing listed as moving, nothing moved
        past the scan. (A relaying instance retries deferred mail, which moves it back to
        active: there this only means "nothing was moving just now".)"""
        return self._wait_for_queue(
            lambda queued: [e for e in queued if e.get("queue_name") in _MOVING],
            "still moving",
            timeout,
        )

    def wait_until_queue_empty(self, timeout: float) -> None:
        """Block until every message has left the queue, or raise PostfixError with what is
        left (each recipient's ``delay_reason``) and the log."""
        self._wait_for_queue(lambda queued: queued, "still queued", timeout)

    def _wait_for_queue(
        self,
        waiting: Callable[[list[QueueEntry]], list[QueueEntry]],
        what: str,
        timeout: float,
    ) -> list[QueueEntry]:
        """Poll the queue until ``waiting(queue)`` is empty and return the queue, or raise
        PostfixError with the first waiting entries and the log."""
        deadline = time.monotonic() + timeout
        while True:
            queued = self.queue()
            if not (left := waiting(queued)):
                return queued
            if time.monotonic() >= deadline:
                raise PostfixError(
                    self._explain(
                        f"{len(left)} message(s) {what} after {timeout} s: "
                        + json.dumps(left[:5], indent=1)
                    )
                )
            time.sleep(0.1)

    # -- what happened ---------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def master_pid(self) -> int | None:
        """The master daemon's process id (``queue/pid/master.pid``), None without one: the
        root of the instance's process tree (every daemon is its child)."""
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def processes(self) -> list[int]:
        """Every live process of this instance (master and children): the ids a test may
        SIGKILL to crash it. Each carries the instance's MAIL_CONFIG in its environment,
        which Postfix's import_environment hands down to every child."""
        marker = f"MAIL_CONFIG={self.config_dir}".encode()
        return [pid for pid, environ in live_processes("environ") if marker in environ.split(b"\0")]

    def _explain(self, what: str) -> str:
        tail = self.log_text()[-LOG_TAIL:]
        return f"private Postfix {self.config_dir}: {what}\n--- log tail ---\n{tail}"


_MOVING = ("maildrop", "incoming", "active")


def _run(argv: list[str], instance: PostfixInstance | None = None) -> str:
    """Run a Postfix command; its stdout, or PostfixError with what it said and the log.

    Postfix's commands report errors to syslog, and to stderr only when stderr is a
    terminal: so stderr is a pseudo-terminal here (stdout stays a plain file, for output
    that is parsed)."""
    terminal, child_end = pty.openpty()
    with tempfile.TemporaryFile() as out:
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=child_end)
        finally:
            os.close(child_end)
        said = bytearray()
        deadline = time.monotonic() + COMMAND_TIMEOUT
        try:
            # Until EOF, or until the command exits: a daemon it started may hold the
            # terminal open for good.
            while time.monotonic() < deadline:
                if select.select([terminal], [], [], 0.05)[0]:
                    try:
                        chunk = os.read(terminal, 65536)
                    except OSError:  # EIO: no writer is left
                        chunk = b""
                    if not chunk:
                        break
                    said += chunk
                elif process.poll() is not None:
                    break
            else:
                process.kill()
        finally:
            os.close(terminal)
        code = process.wait()
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    if code != 0:
        what = f"{shlex.join(argv)} exited {code}: {stdout}{said.decode(errors='replace')}"
        raise PostfixError(instance._explain(what) if instance else what)
    return stdout


def _reachable_by(user: str, folder: Path) -> bool:
    """Whether ``user`` (not root) may traverse every folder down to ``folder``."""
    entry = pwd.getpwnam(user)
    for path in (folder, *folder.parents):
        info = path.stat()
        if info.st_uid == entry.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == entry.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


@contextmanager
def private_postfix(
    tmp_dir: Path,
    *,
    listen_port: int | None = None,
    relay_host: str = "127.0.0.1",
    relay_port: int | None = None,
    deliver: Deliver = "relay",
    tls: TlsLevel = "encrypt",
    ca_file: Path | None = None,
    settings: Mapping[str, str] | None = None,
    name: str = "postfix",
) -> Iterator[PostfixInstance]:
    """Run a private Postfix in ``tmp_dir / name`` until the block ends.

    ``deliver="relay"`` relays everything to ``[relay_host]:relay_port`` (required);
    ``deliver="defer"`` (no ``relay_port``) makes a sink that keeps every message it accepts in
    its deferred queue (:func:`_route`). ``listen_port`` None picks a free loopback port.
    ``settings`` are extra main.cf parameters, applied last (e.g. ``{"soft_bounce": "yes"}``).
    Stopping is SIGTERM to the master, then SIGKILL for any process of this instance still
    alive.
    """
    if deliver == "relay" and relay_port is None:
        raise ValueError('private_postfix(deliver="relay") needs a relay_port')
    if deliver == "defer" and relay_port is not None:
        raise ValueError('private_postfix(deliver="defer") relays nowhere: no relay_port')
    for tool in ("postfix", "postconf", "postqueue", "sendmail"):
        require(tool)
    with private_root(tmp_dir, name, users=(MAIL_OWNER,), keep=("maillog",)) as root:
        instance = _configure(
            root,
            port=listen_port or free_port(),
            relay=None if relay_port is None else (relay_host, relay_port),
            tls=tls,
            ca_file=ca_file,
            settings=settings or {},
        )
        try:
            _start(instance)
            yield instance
        finally:
            _stop(instance)


@contextmanager
def private_root(
    tmp_dir: Path, name: str, *, users: Sequence[str], keep: Sequence[str]
) -> Iterator[Path]:
    """The folder of one private instance, ``tmp_dir / name``, mode 0755, for the block.

    Daemons that drop to ``users`` open files there by absolute path. When one of them
    cannot traverse ``tmp_dir`` (pytest's tmp_path sits under a 0700 folder) the folder is
    made under /tmp instead and linked from ``tmp_dir / name``; at the end the link is
    replaced by a folder holding copies of the ``keep`` files (paths relative to the root:
    the logs, for a post-mortem) and the /tmp folder is removed."""
    tmp_dir = Path(tmp_dir).resolve()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    if all(_reachable_by(user, tmp_dir) for user in users):
        root = tmp_dir / name
        root.mkdir()
        cleanup = False
    else:
        root = Path(tempfile.mkdtemp(prefix=f"peer-{name}-", dir="/tmp"))
        (tmp_dir / name).symlink_to(root)
        cleanup = True
    try:
        root.chmod(0o755)
        yield root
    finally:
        if cleanup:
            with suppress(OSError):
                (tmp_dir / name).unlink()
                (tmp_dir / name).mkdir()
            for relative in keep:
                with suppress(OSError):
                    (tmp_dir / name / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(root / relative, tmp_dir / name / relative)
            shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def open_private_postfix(
    tmp_dir: Path,
    *,
    listen_port: int | None = None,
    relay_host: str = "127.0.0.1",
    relay_port: int | None = None,
    deliver: Deliver = "relay",
    tls: TlsLevel = "encrypt",
    ca_file: Path | None = None,
    settings: Mapping[str, str] | None = None,
    name: str = "postfix",
) -> AsyncIterator[PostfixInstance]:
    """:func:`private_postfix` for trio: start and stop run in a worker thread."""
    manager = private_postfix(
        tmp_dir,
        listen_port=listen_port,
        relay_host=relay_host,
        relay_port=relay_port,
        deliver=deliver,
        tls=tls,
        ca_file=ca_file,
        settings=settings,
        name=name,
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
    port: int,
    relay: tuple[str, int] | None,
    tls: TlsLevel,
    ca_file: Path | None,
    settings: Mapping[str, str],
) -> PostfixInstance:
    """A relay to ``relay``, or with None a sink (:func:`_route`)."""
    instance = new_instance(root, port=port, relay=relay)
    main = {
        **common_main(instance, hostname=f"peer-{port}.postfix.test"),
        # No local delivery: a pure relay (or a sink).
        "relay_domains": "",
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "smtp_dns_support_level": "disabled",
        "smtp_address_preference": "ipv4",
        **_route(instance),
        # The next hop.
        "smtp_tls_security_level": tls,
        "smtp_tls_loglevel": "1",
        **({"smtp_tls_CAfile": str(ca_file)} if ca_file is not None else {}),
        # Small timeouts: tests wait seconds, not minutes.
        "smtp_connect_timeout": "5s",
        "smtp_helo_timeout": "10s",
        "smtp_starttls_timeout": "10s",
        "smtp_mail_timeout": "10s",
        "smtp_rcpt_timeout": "10s",
        "smtp_data_init_timeout": "10s",
        "smtp_data_xfer_timeout": "30s",
        "smtp_data_done_timeout": "30s",
        "smtp_quit_timeout": "5s",
        **settings,
    }
    smtpd = f"{instance.host}:{port}/inet={instance.host}:{port} inet n - n - - smtpd"
    write_config(instance, main, [smtpd])
    return instance


def _route(instance: PostfixInstance) -> dict[str, str]:
    """main.cf parameters for where mail goes: ``relayhost`` for a relay, and for a sink
    (``deliver="defer"``, no ``instance.relay``) nowhere.

    Every address is in the default class here (mydestination, relay_domains and the virtual
    domains are empty), so every message goes to ``default_transport``: LMTP to a socket that
    does not exist, in the instance's folder. The queue manager defers mail for that
    transport without trying it (``defer_transports``), so each message goes to the deferred
    queue once; should a flush push it on anyway, the connection fails and it is deferred
    again. Nothing leaves the instance, and nothing is looked up (an ``smtp`` default
    transport, as a sink once had, would look up the recipient's domain on a flush, then
    bounce). A ``retry:`` transport would be simpler, but smtpd refuses recipients that
    resolve to it (450 4.3.2).

    Retries an hour apart: with the usual 1-2 s the queue manager moved the whole deferred
    queue back through the active queue again and again while the load ran (four to five
    passes per message). smtp-source's 4,000 messages over 20 sessions then came in at 422 to
    577 messages/s and ``postqueue -j`` counted 3,983 to 4,065 of them (the ones caught moving
    twice, or not at all); without retries 523 to 562 messages/s, 4,000 every time."""
    if instance.relay is not None:
        host, port = instance.relay
        return {"relayhost": f"[{host}]:{port}"}
    nowhere = f"lmtp:unix:{instance.root / 'sink-nowhere'}"
    return {
        "default_transport": nowhere,
        "relay_transport": nowhere,
        "defer_transports": "lmtp",
        "queue_run_delay": "1h",
        "minimal_backoff_time": "1h",
        "maximal_backoff_time": "1h",
    }


def new_instance(
    root: Path, *, port: int, relay: tuple[str, int] | None, host: str = "127.0.0.1"
) -> PostfixInstance:
    """The instance's folders under ``root`` (only ``etc/`` and ``queue/`` made here) and
    its :class:`PostfixInstance`; ``port`` on ``host`` is what :func:`_start` waits for."""
    config_dir, queue_dir = root / "etc", root / "queue"
    config_dir.mkdir()
    queue_dir.mkdir()  # postfix(1) starts with chdir() there; the rest it makes itself
    return PostfixInstance(
        root=root,
        config_dir=config_dir,
        queue_dir=queue_dir,
        data_dir=root / "data",
        log_file=root / "maillog",
        port=port,
        relay=relay,
        host=host,
    )


def common_main(instance: PostfixInstance, *, hostname: str) -> dict[str, str]:
    """main.cf parameters every private instance has: its own folders and log, loopback
    only, no DNS, no local(8) delivery, headers
    of SMTP-received mail left alone, fast retries."""
    return {
        "compatibility_level": "3.6",
        "queue_directory": str(instance.queue_dir),
        "data_directory": str(instance.data_dir),
        "command_directory": "/usr/sbin",
        "daemon_directory": "/usr/lib/postfix/sbin",
        "shlib_directory": "/usr/lib/postfix",
        "meta_directory": "/etc/postfix",
        "mail_owner": MAIL_OWNER,
        "setgid_group": SETGID_GROUP,
        # Logs: a name of its own in anything that reaches syslog, and a file of its own.
        "syslog_name": f"postfix-peer-{instance.port}",
        "maillog_file": str(instance.log_file),
        "maillog_file_prefixes": str(instance.root),
        # Loopback, IPv4, no local delivery. inet_interfaces must be an interface's
        # address ("fatal: parameter inet_interfaces: no local interface found for
        # 127.0.0.2"); a master.cf listener may bind any other loopback address.
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "myhostname": hostname,
        "mydomain": "postfix.test",
        "myorigin": "$myhostname",
        "mydestination": "",
        "local_recipient_maps": "",
        "local_transport": "error:5.1.1 no local delivery in a private test instance",
        "alias_maps": "",
        "alias_database": "",
        # Headers of mail received over SMTP are left as they came (a journal copy is
        # evidence); only the Received: field is added.
        "local_header_rewrite_clients": "",
        "smtputf8_enable": "yes",
        "message_size_limit": "0",
        "mailbox_size_limit": "0",
        "biff": "no",
        # Small timeouts and fast retries: tests wait seconds, not minutes.
        "smtpd_timeout": "30s",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        "delay_warning_time": "0",
        "daemon_timeout": "60s",
    }


def write_config(
    instance: PostfixInstance,
    main: Mapping[str, str],
    listeners: Sequence[str],
    services: Mapping[str, str] | None = None,
) -> None:
    """main.cf from ``main``; master.cf from ``listeners`` (whole ``postconf -M`` entries)
    and the usual services, whose ``type private unpriv chroot wakeup maxproc command`` a
    ``services`` entry (``"virtual/unix": "unix - n n - 1 virtual"``) replaces. Both files are
    dated back (:func:`_age`)."""
    config_dir = instance.config_dir
    (config_dir / "main.cf").write_text("")
    (config_dir / "master.cf").write_text("")
    _run(["postconf", "-c", str(config_dir), "-e", *(f"{k}={v}" for k, v in main.items())])
    master = list(listeners)
    for name, kind, rest in _MASTER_SERVICES:
        fields = (services or {}).get(f"{name}/{kind}", f"{kind} {rest}")
        master.append(f"{name}/{kind}={name} {fields}")
    _run(["postconf", "-c", str(config_dir), "-M", "-e", *master])
    # The queue and data folders, with the owners and modes in Postfix's own table
    # (postfix-files), are made by ``postfix start`` itself (post-install create-missing).
    _age(config_dir)


def _age(config_dir: Path) -> None:
    """Date main.cf and master.cf a minute back. Postfix reads a main.cf changed within the
    last second or two again and again, 0.3 s apart, until it is older (it might be
    half-written): 2.4 s for every command right after ``postconf -e``."""
    aged = time.time() - 60
    for path in (config_dir / "main.cf", config_dir / "master.cf"):
        os.utime(path, (aged, aged))


def _start(instance: PostfixInstance) -> None:
    # ``postfix start`` returns once the master has initialised (``master -w``), smtpd's
    # listening socket included; a bind failure makes it fail, with the reason on stderr.
    _run(["postfix", "-c", str(instance.config_dir), "start"], instance)
    try:
        wait_for_port(instance.host, instance.port, START_TIMEOUT)
    except TimeoutError as exc:
        raise PostfixError(instance._explain(str(exc))) from None


def _stop(instance: PostfixInstance) -> None:
    """SIGTERM to the master (what ``postfix stop`` does: the master passes it on to its
    children and exits), then SIGKILL whatever of this instance is still alive after
    STOP_TIMEOUT. ``postfix stop`` itself checks once right after the signal whether the
    master is gone and otherwise sleeps a whole second, so half the time stopping cost a
    second more; polling here takes a few milliseconds. Without a master pid file (a broken
    start) the processes are SIGKILLed at once; nothing runs after a failed start, and then
    nothing is done (Postfix's fatal "not running" would cost a second)."""
    left = instance.processes()
    if not left:
        return
    master = instance.master_pid()
    if master in left:
        os.kill(master, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while (left := instance.processes()) and time.monotonic() < deadline:
            time.sleep(0.01)
    for pid in left:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
