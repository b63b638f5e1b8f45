"""A private Postfix instance for tests: its own configuration, queue and log under a
temporary folder, an smtpd on a loopback port, relaying everything to one next hop.

It coexists with anything else on the machine (no system instance is needed or touched) and
is stopped, and its leftovers killed, on exit. Debian's postfix package must be installed
(.ci/run does it); a test that needs it fails, not skips, without it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PrivatePostfix", "free_port", "private_postfix", "require"]


def require(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        pytest.fail(f"{tool} is not installed (.ci/run installs Debian's postfix and swaks)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivatePostfix:
    config_dir: Path
    queue_dir: Path
    port: int

    def postconf(self, *settings: str) -> None:
        subprocess.run(["postconf", "-c", str(self.config_dir), "-e", *settings], check=True)

    def log_text(self) -> str:
        log = self.config_dir.parent / "maillog"
        return log.read_text(errors="replace") if log.exists() else ""

    def queue(self) -> list[dict[str, object]]:
        out = subprocess.run(
            ["postqueue", "-c", str(self.config_dir), "-j"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    @property
    def master_pid(self) -> int:
        return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.config_dir), "-f"], check=False)

    def wait_until_queue_empty(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queue():
                return
            time.sleep(0.2)
        raise AssertionError(f"Postfix queue not empty: {self.queue()}\n{self.log_text()[-4000:]}")


@contextmanager
def private_postfix(
    *, relay_port: int | None, tls: str = "encrypt", ca_file: Path | None = None
) -> Iterator[PrivatePostfix]:
    """``relay_port``: the next hop for everything; None makes a sink that keeps every
    message in its queue (deferred), for the benchmark.

    Postfix drops to its own user, which must reach the queue and data folders: they live
    in a fresh folder under /tmp that others may traverse (pytest's tmp_path may not be),
    removed afterwards."""
    require("postfix")
    folder = Path(tempfile.mkdtemp(prefix="postfix-test-"))
    folder.chmod(0o755)
    try:
        with _instance(folder, relay_port, tls, ca_file) as instance:
            yield instance
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _instance(
    folder: Path, relay_port: int | None, tls: str, ca_file: Path | None
) -> Iterator[PrivatePostfix]:
    config_dir, queue_dir, data_dir = folder / "etc", folder / "queue", folder / "data"
    for path in (config_dir, queue_dir, data_dir):
        path.mkdir(parents=True)
    shutil.chown(data_dir, "postfix", "postfix")  # postfix-script insists
    shutil.copy("/usr/share/postfix/master.cf.dist", config_dir / "master.cf")
    (config_dir / "main.cf").write_text("")
    instance = PrivatePostfix(config_dir, queue_dir, free_port())
    instance.postconf(
        "compatibility_level=3.6",
        f"queue_directory={queue_dir}",
        f"data_directory={data_dir}",
        "mail_owner=postfix",
        "setgid_group=postdrop",
        f"syslog_name=postfix-test-{instance.port}",
        f"maillog_file={folder / 'maillog'}",
        f"maillog_file_prefixes={folder}",
        "inet_interfaces=127.0.0.1",
        "inet_protocols=ipv4",
        "myhostname=relay.test",
        "mydestination=",
        "mynetworks=127.0.0.0/8",
        "local_transport=error:no local delivery",
        *(
            [f"relayhost=[127.0.0.1]:{relay_port}"]
            if relay_port is not None
            else ["defer_transports=smtp relay local error virtual"]
        ),
        f"smtp_tls_security_level={tls}",
        *([f"smtp_tls_CAfile={ca_file}"] if ca_file else []),
        "smtp_tls_loglevel=1",
        "smtputf8_enable=yes",
        "message_size_limit=0",
        "queue_run_delay=1s",
        "minimal_backoff_time=1s",
        "maximal_backoff_time=2s",
        "delay_warning_time=0",
        "shlib_directory=/usr/lib/postfix",
        "daemon_directory=/usr/lib/postfix/sbin",
        "meta_directory=/etc/postfix",
        "manpage_directory=/usr/share/man",
    )
    master = (config_dir / "master.cf").read_text().splitlines()
    rewritten = []
    for line in master:
        fields = line.split()
        if fields and fields[0] == "smtp" and len(fields) > 1 and fields[1] == "inet":
            rewritten.append(f"127.0.0.1:{instance.port} inet n - n - - smtpd")
        elif fields and not line.startswith((" ", "\t", "#")) and len(fields) >= 8:
            fields[4] = "n"  # no chroot: the private queue is not set up for one
            rewritten.append(" ".join(fields))
        else:
            rewritten.append(line)
    rewritten.append("postlog unix-dgram n - n - 1 postlogd")
    (config_dir / "master.cf").write_text("\n".join(rewritten) + "\n")
    postfix = ["postfix", "-c", str(config_dir)]
    started = subprocess.run([*postfix, "start"], check=False, capture_output=True, text=True)
    if started.returncode != 0:
        # Postfix reports fatal errors to syslog, or to stderr only on a terminal: run it
        # again under one to say why.
        why = subprocess.run(
            ["script", "-qc", " ".join([*postfix, "start"]), "/dev/null"],
            check=False,
            capture_output=True,
            text=True,
        )
        raise AssertionError(f"private Postfix did not start: {why.stdout or started.stderr}")
    try:
        _wait_for_port(instance.port)
        yield instance
    finally:
        subprocess.run(["postfix", "-c", str(config_dir), "stop"], check=False, capture_output=True)
        pid_file = queue_dir / "pid" / "master.pid"
        if pid_file.exists():
            try:
                pid = int(pid_file.read_text().split()[0])
                subprocess.run(["kill", "-9", str(pid)], check=False, capture_output=True)
            except (ValueError, IndexError):
                pass


def _wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"private Postfix is not listening on 127.0.0.1:{port}")
