"""A fleet store that refuses writes, through a whole gateway node (SPEC.md 17.7), on a real
PostgreSQL: read-only (as a server is after a failover), out of space, connections cut while
messages are committed. Every refusal is a 4xx; every 250 is retrieved exactly once after;
nothing refused is stored; the journal never goes down; the store, copied out, verifies."""

from __future__ import annotations

import os
import smtplib
import threading
from collections import Counter
from pathlib import Path

import pytest
import trio

from gateway.verify import verify_data_dir

from .gateway_helpers import strip_received
from .peers import private_postgres
from .test_fleet_archive import copied_out
from .test_fleet_serve import create_mailbox
from .test_workers import CONFIG, retrieve, serve

pytestmark = pytest.mark.slow


def text(size: int) -> bytes:
    """``size`` random octets as lines of hex (POP3 clients read lines of 2,048 at most)."""
    data = os.urandom(size).hex().encode()
    return b"\r\n".join(data[i : i + 76] for i in range(0, len(data), 76))


class Sender:
    """Sends unique messages to one node, noting what became of each."""

    def __init__(self, port: int, mailbox_id: str) -> None:
        self.port, self.mailbox_id = port, mailbox_id
        self.outcomes: dict[bytes, str] = {}
        self.codes: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._n = 0

    def send(self, count: int, size: int = 2000, *, together: bool = False) -> Counter[str]:
        """``count`` messages (at once with ``together``); how many ended how."""
        with self._lock:
            first, self._n = self._n, self._n + count
        numbers = range(first, first + count)
        bodies = [b"Subject: m%d\r\n\r\n%s\r\n" % (n, text(size)) for n in numbers]
        if together:
            threads = [threading.Thread(target=self.one, args=(body,)) for body in bodies]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        else:
            for body in bodies:
                self.one(body)
        return Counter(self.outcomes[body] for body in bodies)

    def one(self, body: bytes) -> None:
        outcome = "accepted"
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as smtp:
                smtp.sendmail("a@example.com", [f"mbx-{self.mailbox_id}@localhost"], body)
        except smtplib.SMTPResponseException as exc:
            outcome = "refused"
            with self._lock:
                self.codes[exc.smtp_code] += 1
        except (smtplib.SMTPServerDisconnected, OSError):
            outcome = "unknown"
        with self._lock:
            self.outcomes[body] = outcome


def test_a_refusing_store_gives_4xx_and_nothing_half_written(tmp_path: Path) -> None:
    with private_postgres(tmp_path / "pg", disk_size=48 << 20) as pg:
        mailbox_id, password = trio.run(create_mailbox, tmp_path / "setup", pg.dsn)
        store = f'[store]\nbackend = "postgresql"\ndsn = "{pg.dsn}"\n'
        with serve(tmp_path, workers=2, config_text=CONFIG.replace("[store]\n", store)) as node:
            sender = Sender(node.ports["smtp"], mailbox_id)
            assert sender.send(5) == {"accepted": 5}

            pg.make_read_only()  # as a server is after a failover
            assert sender.send(5) == {"refused": 5}
            pg.make_read_only(False)
            assert sender.send(5) == {"accepted": 5}

            with pg.disk_full():
                assert sender.send(5, size=60_000)["refused"] >= 1
            assert sender.send(5) == {"accepted": 5}

            # Connections cut while messages are in flight: each committed or not, and
            # answered as it went (a COMMIT cut short is learnt from the store).
            cutter = threading.Thread(target=lambda: [pg.terminate_backends() for _ in range(5)])
            cutter.start()
            sender.send(20, together=True)
            cutter.join(timeout=60)
            assert sender.send(5) == {"accepted": 5}

            assert all(400 <= code < 500 for code in sender.codes), sender.codes
            stored = Counter(
                strip_received(m) for m in retrieve(node.ports["pop3"], mailbox_id, password)
            )
            lines = "".join(node.lines)
            assert "event=child-exited" not in lines, lines[-3000:]

        for body, outcome in sender.outcomes.items():
            if outcome == "accepted":
                assert stored[body] == 1
            elif outcome == "refused":
                assert stored[body] == 0
        assert set(stored) <= set(sender.outcomes) and max(stored.values()) == 1

        copy = copied_out(pg.dsn, tmp_path / "copy")
        report = verify_data_dir(copy.root)
        assert report.ok, [str(p) for p in report.problems]
