"""Failover of a fleet store under load (SPEC.md 17.7), on real PostgreSQL: a primary with a
synchronous streaming standby, two gateway nodes (127.0.0.1, 127.0.0.2), 20 SMTP clients
spread over both. One node is killed with SIGKILL (its clients move to the other, which keeps
accepting); then the primary is killed with SIGKILL and the standby promoted (``pg_ctl
promote``). Every message that got a 250 is retrieved exactly once afterwards; none that got
a refusal is; one whose session was cut without a reply may be there, once at most; and
``gateway verify`` on the database exits 0. What clients are refused meanwhile is refused
with 4xx (a commit cut short by the failover is answered once the gateway has learnt from the
new primary whether it committed)."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from .gateway_helpers import strip_received
from .peers import PostgresServer, fleet_dsn, with_standby
from .test_fleet_serve import create_mailbox
from .test_fleet_two_nodes import NODES, free_port_on_every_node, node_config
from .test_workers import ROOT, Served, retrieve, serve

pytestmark = pytest.mark.slow

CLIENTS = 20


@dataclass
class Load:
    """SMTP clients sending unique messages in a loop, each noting what became of each."""

    port: int
    mailbox_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # body -> "accepted" (250), "refused" (a reply refused it, or no connection was made),
    # "unknown" (the session was cut before the reply); with the node and the time.
    outcomes: dict[bytes, tuple[str, str, float]] = field(default_factory=dict)
    codes: Counter[int] = field(default_factory=Counter)

    def run(self, client: int) -> None:
        hosts = [NODES[client % 2], NODES[(client + 1) % 2]]
        n = 0
        while not self.stop.is_set():
            body = b"Subject: c%d-%d\r\n\r\nclient %d message %d\r\n" % (client, n, client, n)
            n += 1
            host = hosts[0]
            outcome = self.send(host, body)
            if outcome == "moved":  # the node is gone: to the other one, as an MTA would
                hosts.reverse()
                outcome = "refused"
            with self.lock:
                self.outcomes[body] = (outcome, host, time.monotonic())
            if outcome != "accepted":
                time.sleep(0.05)

    def send(self, host: str, body: bytes) -> str:
        try:
            smtp = smtplib.SMTP(host, self.port, timeout=60, source_address=(host, 0))
        except ConnectionRefusedError:
            return "moved"
        except OSError:
            return "refused"
        try:
            smtp.sendmail("a@example.com", [f"mbx-{self.mailbox_id}@localhost"], body)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as exc:
            self.count(exc)
            return "refused"
        except smtplib.SMTPResponseException as exc:
            self.count(exc)
            return "refused"
        except (smtplib.SMTPServerDisconnected, OSError):
            return "unknown"
        finally:
            smtp.close()
        return "accepted"

    def count(self, exc: Exception) -> None:
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _text in exc.recipients.values()]
        else:
            codes = [int(getattr(exc, "smtp_code", 0))]
        with self.lock:
            self.codes.update(codes)

    def accepted(self, host: str | None = None, since: float = 0.0) -> int:
        with self.lock:
            return sum(
                1
                for outcome, on, at in self.outcomes.values()
                if outcome == "accepted" and at >= since and host in (None, on)
            )

    def wait_for(self, count: int, host: str | None = None, since: float = 0.0) -> None:
        deadline = time.monotonic() + 120
        while self.accepted(host, since) < count:
            assert time.monotonic() < deadline, f"not {count} accepted: {self.summary()}"
            time.sleep(0.05)

    def summary(self) -> str:
        with self.lock:
            return f"{Counter(o for o, _h, _t in self.outcomes.values())}, codes {self.codes}"


def kill_node(served: Served) -> None:
    """SIGKILL a gateway node: its supervisor and every child at once."""
    for pid in [*served.children().values(), served.process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    served.process.wait(timeout=30)


def test_failover_loses_nothing_acknowledged(postgres: PostgresServer, tmp_path: Path) -> None:
    with with_standby(postgres, tmp_path / "standby", synchronous=True) as standby:
        dsn = fleet_dsn([postgres, standby])
        mailbox_id, password = trio.run(create_mailbox, tmp_path / "setup", dsn)
        ports = {name: free_port_on_every_node() for name in ("smtp", "pop3", "admin")}
        folders = [tmp_path / "a", tmp_path / "b"]
        for folder in folders:
            folder.mkdir()
        load = Load(ports["smtp"], mailbox_id)
        threads = [threading.Thread(target=load.run, args=(n,)) for n in range(CLIENTS)]
        with (
            serve(folders[0], workers=2, config_text=node_config(NODES[0], "a", dsn, ports)) as a,
            serve(folders[1], workers=2, config_text=node_config(NODES[1], "b", dsn, ports)),
        ):
            try:
                for thread in threads:
                    thread.start()
                load.wait_for(60)
                kill_node(a)
                load.wait_for(60, NODES[1], since=time.monotonic())  # b keeps accepting
                postgres.kill9()
                time.sleep(2.0)  # no primary meanwhile
                standby.promote()
                load.wait_for(40, NODES[1], since=time.monotonic())  # b found the new primary
            finally:
                load.stop.set()
                for thread in threads:
                    thread.join(timeout=120)
            # Refused while the store could not be reached: always a temporary failure.
            assert all(400 <= c < 500 for c in load.codes), load.summary()
            stored = Counter(
                strip_received(m)
                for m in retrieve(ports["pop3"], mailbox_id, password, host=NODES[1])
            )

        outcomes = {body: outcome for body, (outcome, _host, _at) in load.outcomes.items()}
        accepted = {body for body, outcome in outcomes.items() if outcome == "accepted"}
        assert len(accepted) >= 160, load.summary()
        assert all(stored[body] == 1 for body in accepted), "a message acknowledged is lost"
        assert all(count == 1 for count in stored.values()), "a message stored twice"
        refused = [b for b, outcome in outcomes.items() if outcome == "refused" and b in stored]
        assert not refused, f"{len(refused)} messages refused yet stored"
        assert set(stored) <= set(outcomes)

        verified = subprocess.run(
            [sys.executable, "-m", "gateway", "verify", "--dsn", dsn, "--scratch", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
