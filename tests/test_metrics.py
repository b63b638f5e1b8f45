"""Health checks and the Prometheus endpoint (SPEC.md 13.7), scraped by Debian's real
``prometheus`` server on loopback: a PromQL query over its HTTP API returns the numbers the
test caused (messages sent, logins failed, retrievals, each mailbox's backlog)."""

from __future__ import annotations

import json
import poplib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
import trio

from gateway.config import AlarmSettings
from gateway.events import CertificateIssued, CertificateRenewalFailed, encode_event, now
from gateway.log import Location, LogRecord, RecordKind
from gateway.servers.gateway import Gateway
from gateway.servers.monitoring import Monitoring
from gateway.services.accounts import Accounts
from gateway.services.alarms import Alarms
from gateway.services.archive import Archive, StoreConfig
from gateway.services.metrics import Metrics

from .conftest import FAST_KDF
from .gateway_helpers import make_config
from .test_workers import Served, admin_cli, create_mailbox, insecure, retrieve, send, serve

pytestmark = pytest.mark.slow
ADMIN_PASSWORD = "an admin password for tests"


def fetch(url: str, token: str | None = None) -> tuple[int, str, Message]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=insecure(), timeout=20) as reply:
            return reply.status, reply.read().decode(), reply.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers


def create_token(tmp_path: Path, served: Served) -> str:
    token: str = json.loads(admin_cli(tmp_path, served, "token", "create", "prometheus"))["token"]
    return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_prometheus(
    tmp_path: Path, admin_port: int, token: str
) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (tools/system-packages.sh test installs it)")
    folder = tmp_path / "prometheus"
    folder.mkdir()
    (folder / "token").write_text(token)
    (folder / "prometheus.yml").write_text(
        f"""
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: gateway
    scheme: https
    tls_config:
      ca_file: {tmp_path / "data" / "tls" / "cert.pem"}
      server_name: localhost
    authorization:
      credentials_file: {folder / "token"}
    static_configs:
      - targets: ["127.0.0.1:{admin_port}"]
"""
    )
    port = free_port()
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return process, f"http://127.0.0.1:{port}"


def query(base: str, promql: str) -> float | None:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            data = json.load(reply)
    except OSError:
        return None
    result = data["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def wait_for(base: str, promql: str, expected: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = query(base, promql)
        if got == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"{promql} = {got}, expected {expected}")


def test_prometheus_scrapes_what_the_gateway_did(tmp_path: Path) -> None:
    data = tmp_path / "data"
    busy, busy_password = trio.run(create_mailbox, data)
    fetched, fetched_password = trio.run(create_mailbox, data)
    del busy_password
    with serve(tmp_path, workers=1) as served:
        admin = f"https://127.0.0.1:{served.ports['admin']}"
        assert fetch(f"{admin}/healthz")[0] == 200
        served.wait_for_line(r"event=mailboxes-opened")
        status, body, _headers = fetch(f"{admin}/readyz")
        assert (status, body) == (200, "ready\n")
        for n in range(3):
            send(served.ports["smtp"], busy, b"Subject: %d\r\n\r\nwaiting %d\r\n" % (n, n))
        send(served.ports["smtp"], fetched, b"Subject: fetched\r\n\r\nfetched\r\n")
        for _ in range(2):
            pop = poplib.POP3("127.0.0.1", served.ports["pop3"], timeout=20)
            pop.stls(context=insecure())
            pop.user(fetched)
            with pytest.raises(poplib.error_proto):
                pop.pass_("not the password")
            pop.quit()
        assert len(retrieve(served.ports["pop3"], fetched, fetched_password, delete=True)) == 1

        status, body, headers = fetch(f"{admin}/metrics")
        assert status == 401 and "Bearer" in headers.get("WWW-Authenticate", "")
        assert fetch(f"{admin}/metrics", token="api_nosuch_token")[0] == 401
        token = create_token(tmp_path, served)
        status, body, headers = fetch(f"{admin}/metrics", token=token)
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert f'gateway_mailbox_messages_waiting{{mailbox="{busy}"}} 3.0' in body

        prometheus, base = start_prometheus(tmp_path, served.ports["admin"], token)
        try:
            wait_for(base, 'up{job="gateway"}', 1)
            wait_for(base, 'sum(gateway_messages_accepted_total{origin="journal"})', 4)
            wait_for(base, 'sum(gateway_login_failures_total{protocol="pop3"})', 2)
            wait_for(base, "sum(gateway_messages_retrieved_total)", 1)
            wait_for(base, "sum(gateway_messages_deleted_total)", 1)
            wait_for(base, f'gateway_mailbox_messages_waiting{{mailbox="{busy}"}}', 3)
            wait_for(base, f'gateway_mailbox_messages_waiting{{mailbox="{fetched}"}}', 0)
            oldest = query(base, f'gateway_mailbox_oldest_waiting_seconds{{mailbox="{busy}"}}')
            assert oldest is not None and 0 <= oldest < 120
            assert (
                query(base, f'gateway_mailbox_oldest_waiting_seconds{{mailbox="{fetched}"}}')
                is None
            )
            retrieval = query(
                base, f'gateway_mailbox_last_retrieval_seconds{{mailbox="{fetched}"}}'
            )
            assert retrieval is not None and 0 <= retrieval < 120
            never = f'gateway_mailbox_last_retrieval_seconds{{mailbox="{busy}"}}'
            assert query(base, never) is None
            wait_for(base, 'sum(gateway_sessions_total{protocol="smtp"})', 4)
            assert (query(base, "gateway_commit_round_seconds_count") or 0) > 0
            assert (
                query(base, "gateway_tls_certificate_expiry_timestamp_seconds") or 0
            ) > time.time()
            wait_for(base, "gateway_workers", 1)
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)


async def test_readiness_says_what_is_missing(tmp_path: Path) -> None:
    """A gateway that does not serve yet is alive but not ready, and says why."""
    config = make_config(tmp_path / "data")
    gateway = Gateway(config, environ={}, announce_admin_password=lambda _password: None)
    archive = await Archive.open(tmp_path / "data", StoreConfig(kdf=FAST_KDF))
    try:
        accounts = Accounts(archive.data, FAST_KDF, archive.state.admin, archive.append_control)
        monitoring = Monitoring(gateway, archive, accounts, Metrics({}))
        assert monitoring.healthz().status == 200
        reply = monitoring.readyz()
        assert reply.status == 503
        assert reply.body == b"not ready: the listeners are not up yet\n"
        # Under the store's free-space floor (as the alarms' look found it): not ready either.
        await Alarms(archive, AlarmSettings(), min_free_bytes=1 << 62).check_space()
        assert b"under store.min_free_bytes" in monitoring.readyz().body
    finally:
        await archive.aclose()


def test_label_values_from_records_are_capped() -> None:
    """A client cannot grow the number of series: failure reasons past the cap are "other"."""
    metrics = Metrics({})
    for n in range(200):
        metrics.login_failures.add(1, "pop3", f"reason {n}")
    values = {labels[1] for labels in metrics.login_failures.values}
    assert len(values) == 51 and "other" in values
    assert metrics.login_failures.values[("pop3", "other")] == 150


def test_certificate_events_are_counted() -> None:
    """The ACME service's records (SPEC.md 12.4) as counters: issued, and failures by stage."""
    metrics = Metrics({})
    events = [
        CertificateRenewalFailed(
            at=now(),
            names=("mx.example.net",),
            directory="https://acme.example/dir",
            stage="challenge",
            reason="the CA could not fetch the token",
            failures=1,
            retry_in=60.0,
            serving="self-signed",
        ),
        CertificateIssued(
            at=now(),
            names=("mx.example.net",),
            directory="https://acme.example/dir",
            issuer="CN=test intermediate",
            serial="01",
            sha256="AB:CD",
            not_before=now(),
            not_after=now(),
        ),
    ]
    records = [
        LogRecord(n, RecordKind.EVENT, encode_event(e), bytes(32), Location(0, 0, 0, n))
        for n, e in enumerate(events)
    ]
    metrics.observe_control(records, True)
    assert metrics.certificate_failures.values == {("challenge",): 1}
    assert metrics.certificates_issued.values == {("first",): 1}
