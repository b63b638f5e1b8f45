"""Certificates from an ACME CA (SPEC.md 12.4) against Debian's pebble, Let's Encrypt's test
CA, started here on loopback: issuance on the first start (the self-signed certificate serves
meanwhile), the chain served on every listener (SMTP STARTTLS, SMTPS, POP3S, the admin
console) verified against pebble's root by smtplib, poplib and ``openssl s_client``; renewal
at two thirds of a short lifetime swapped into the journal and the worker without dropping a
session; a CA that is down at renewal; a challenge the CA cannot verify. Plus the http-01
responder and the configuration checks on their own."""

from __future__ import annotations

import hashlib
import json
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme

from gateway.config import ConfigError, load_config
from gateway.events import CertificateIssued, CertificateRenewalFailed, decode_control_event
from gateway.log import DataDir, iter_log
from gateway.servers.acme_http import serve_acme_http
from gateway.services.acme import (
    FIRST_RETRY,
    MAX_RETRY,
    ChallengeTokens,
    renewal_time,
    retry_delay,
)
from gateway.services.archive import CONTROL_LOG_ID
from gateway.tls import certificate_info

from .test_workers import Served, serve

pytestmark = pytest.mark.slow

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

CONFIG = """
data_dir = "{data}"
hostname = "localhost"
shutdown_grace = 5.0
[[listeners]]
name = "smtp"
protocol = "smtp"
port = 0
tls = "starttls"
[[listeners]]
name = "smtps"
protocol = "smtp"
port = 0
tls = "implicit"
[[listeners]]
name = "pop3s"
protocol = "pop3"
port = 0
tls = "implicit"
[[listeners]]
name = "admin"
protocol = "admin"
port = 0
tls = "implicit"
[tls.acme]
directory = "{directory}"
agree_terms = true
contact = "postmaster@example.com"
http_address = "127.0.0.1"
http_port = {http_port}
ca_file = "{ca_file}"
[store.kdf]
memory_kib = 64
iterations = 1
lanes = 1
insecure_fast_for_tests = true
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Pebble:
    process: subprocess.Popen[bytes]
    directory: str
    management: str
    ca_file: Path  # the CA of pebble's own HTTPS certificate (made here with trustme)

    def fetch(self, path: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(f"{self.management}{path}", context=context) as reply:
            body: bytes = reply.read()
            return body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@contextmanager
def pebble(tmp_path: Path, http_port: int, *, validity: int = 0) -> Iterator[Pebble]:
    """Pebble on loopback: its ACME server's certificate from a trustme CA (Debian ships
    none), validations of http-01 on ``http_port``, no random sleeps, no refused nonces,
    certificates valid ``validity`` seconds (0: pebble's default, five years)."""
    folder = tmp_path / "pebble"
    folder.mkdir()
    ca = trustme.CA()
    served = ca.issue_cert("127.0.0.1", "localhost")
    served.private_key_pem.write_to_path(str(folder / "key.pem"))
    served.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    acme_port, management_port = free_port(), free_port()
    settings: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{acme_port}",
        "managementListenAddress": f"127.0.0.1:{management_port}",
        "certificate": str(folder / "cert.pem"),
        "privateKey": str(folder / "key.pem"),
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity:
        settings["certificateValidityPeriod"] = validity
    (folder / "config.json").write_text(json.dumps({"pebble": settings}))
    log = (folder / "pebble.log").open("wb")
    process = subprocess.Popen(
        [PEBBLE, "-config", str(folder / "config.json"), "-strict=false"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        },
    )
    server = Pebble(
        process,
        f"https://127.0.0.1:{acme_port}/dir",
        f"https://127.0.0.1:{management_port}",
        folder / "ca.pem",
    )
    try:
        deadline = time.monotonic() + 30
        while b"ACME directory available" not in (folder / "pebble.log").read_bytes():
            assert process.poll() is None, (folder / "pebble.log").read_text()
            assert time.monotonic() < deadline, "pebble did not start"
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
        log.close()


@contextmanager
def gateway(tmp_path: Path, ca: Pebble, http_port: int, workers: int = 1) -> Iterator[Served]:
    """``gateway serve --workers 1`` (a supervisor, the journal and one worker; 0: one
    process) with ``[tls.acme]`` pointing at ``ca``."""
    text = CONFIG.format(
        data="{data}", directory=ca.directory, http_port=http_port, ca_file=ca.ca_file
    )
    with serve(tmp_path, workers, text) as served:  # serve fills in {data}
        yield served


def count_lines(served: Served, pattern: str) -> int:
    return sum(1 for line in list(served.lines) if re.search(pattern, line))


def wait_for_count(served: Served, pattern: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while count_lines(served, pattern) < count:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"fewer than {count} lines matching {pattern!r}:\n" + "".join(served.lines[-40:])
            )
        time.sleep(0.05)


def trusting(root_pem: bytes) -> ssl.SSLContext:
    """A client that trusts pebble's root alone: the gateway must send the intermediate."""
    context = ssl.create_default_context(cadata=root_pem.decode())
    context.check_hostname = True
    return context


def served_fingerprint(port: int) -> str:
    """SHA-256 of the certificate an implicit-TLS listener serves (not verified)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).digest().hex(":").upper()


def s_client(port: int, root: Path, *starttls: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            *(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *starttls),
            *("-servername", "localhost", "-verify_hostname", "localhost"),
            *("-CAfile", str(root), "-verify_return_error", "-brief"),
        ],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )


def control_events(data: Path) -> list[object]:
    return [decode_control_event(r.body) for r in iter_log(data / "control", CONTROL_LOG_ID)]


@pytest.mark.parametrize("workers", [1, 0])
def test_the_first_start_gets_a_certificate_that_every_listener_serves(
    tmp_path: Path, workers: int
) -> None:
    http_port = free_port()
    with pebble(tmp_path, http_port) as ca, gateway(tmp_path, ca, http_port, workers) as served:
        # Started on the self-signed certificate, saying so; then the CA's, in the journal
        # (admin listener) and pushed to the worker (SMTP, POP3).
        served.wait_for_line(r"event=acme-pending names=localhost")
        issued = served.wait_for_line(r"event=acme-certificate-issued", timeout=60)
        if workers:
            served.wait_for_line(r"worker-1 event=certificate-changed")
        root = tmp_path / "pebble-root.pem"
        root.write_bytes(ca.fetch("/roots/0"))
        intermediate = ca.fetch("/intermediates/0")
        context = trusting(root.read_bytes())

        with smtplib.SMTP("localhost", served.ports["smtp"], timeout=20) as smtp:
            smtp.starttls(context=context)
            assert smtp.ehlo()[0] == 250
        with smtplib.SMTP_SSL("localhost", served.ports["smtps"], timeout=20, context=context) as s:
            assert s.noop()[0] == 250
        pop = poplib.POP3_SSL("localhost", served.ports["pop3s"], timeout=20, context=context)
        try:
            assert pop.getwelcome().startswith(b"+OK")
        finally:
            pop.quit()
        with (
            socket.create_connection(("127.0.0.1", served.ports["admin"]), timeout=20) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as admin,
        ):
            chain = admin.getpeercert()
            assert chain is not None and ("commonName", "localhost") not in chain["issuer"][0]
        for port, starttls in (
            (served.ports["smtp"], ("-starttls", "smtp")),
            (served.ports["smtps"], ()),
            (served.ports["pop3s"], ()),
            (served.ports["admin"], ()),
        ):
            result = s_client(port, root, *starttls)
            assert result.returncode == 0, result.stderr.decode()
            assert b"Verification: OK" in result.stderr, result.stderr.decode()

        # What serves is the file in the data folder, issued by pebble's intermediate.
        pem = DataDir(tmp_path / "data").acme_certificate_path.read_bytes()
        info = certificate_info(pem)
        assert served_fingerprint(served.ports["smtps"]) == info.sha256
        assert served_fingerprint(served.ports["admin"]) == info.sha256
        assert info.issuer == certificate_info(intermediate).subject
        assert f"sha256={info.sha256}" in issued
        folder = tmp_path / "data" / "tls" / "acme"
        for name in ("certificate.pem", "account-key.pem"):
            assert (folder / name).stat().st_mode & 0o777 == 0o600
        assert folder.stat().st_mode & 0o777 == 0o700
        # SIGHUP reloads the certificate files: the CA's stays, it does not fall back.
        reloaded = count_lines(served, r"event=reloaded")
        served.process.send_signal(signal.SIGHUP)
        wait_for_count(served, r"event=reloaded", reloaded + max(workers, 0) + 1)
        assert f"sha256={info.sha256}" in served.wait_for_line(r"event=reloaded")
        assert served_fingerprint(served.ports["smtps"]) == info.sha256
        assert served_fingerprint(served.ports["admin"]) == info.sha256
    assert served.process.returncode == 0
    recorded = [e for e in control_events(tmp_path / "data") if isinstance(e, CertificateIssued)]
    assert len(recorded) == 1
    assert recorded[0].names == ("localhost",) and recorded[0].sha256 == info.sha256
    assert recorded[0].directory == ca.directory and not recorded[0].renewal


def test_renewal_swaps_the_certificate_and_sessions_keep_theirs(tmp_path: Path) -> None:
    """Certificates of 24 s: renewed after 16. An SMTPS and a POP3S session opened on the
    first certificate go on after the swap; new handshakes get the second."""
    http_port = free_port()
    with (
        pebble(tmp_path, http_port, validity=24) as ca,
        gateway(tmp_path, ca, http_port) as served,
    ):
        served.wait_for_line(r"event=acme-certificate-issued .* renewal=false", timeout=60)
        served.wait_for_line(r"worker-1 event=certificate-changed")
        first = certificate_info(DataDir(tmp_path / "data").acme_certificate_path.read_bytes())
        root = ca.fetch("/roots/0")
        context = trusting(root)
        smtp = smtplib.SMTP_SSL("localhost", served.ports["smtps"], timeout=30, context=context)
        pop = poplib.POP3_SSL("localhost", served.ports["pop3s"], timeout=30, context=context)
        try:
            assert isinstance(smtp.sock, ssl.SSLSocket)
            old = smtp.sock.getpeercert(binary_form=True)
            assert old is not None and hashlib.sha256(old).digest().hex(":").upper() == first.sha256
            served.wait_for_line(r"event=acme-certificate-issued .* renewal=true", timeout=60)
            wait_for_count(served, r"worker-1 event=certificate-changed", 2)
            second = certificate_info(DataDir(tmp_path / "data").acme_certificate_path.read_bytes())
            assert second.sha256 != first.sha256
            assert second.not_before >= renewal_time(first).replace(microsecond=0)
            # The sessions opened before the swap still talk over their TLS.
            assert smtp.noop()[0] == 250
            assert "UIDL" in pop.capa()
            assert smtp.sock.getpeercert(binary_form=True) == old
        finally:
            smtp.close()
            pop.quit()
        # New handshakes, on the worker's listeners and the journal's, get the new one.
        with smtplib.SMTP_SSL("localhost", served.ports["smtps"], timeout=20, context=context) as s:
            assert isinstance(s.sock, ssl.SSLSocket)
            new = s.sock.getpeercert(binary_form=True)
            assert new is not None
        current = certificate_info(DataDir(tmp_path / "data").acme_certificate_path.read_bytes())
        assert hashlib.sha256(new).digest().hex(":").upper() in (second.sha256, current.sha256)
        assert served_fingerprint(served.ports["admin"]) in (second.sha256, current.sha256)
    renewals = [
        e
        for e in control_events(tmp_path / "data")
        if isinstance(e, CertificateIssued) and e.renewal
    ]
    assert renewals and renewals[0].sha256 == second.sha256


def test_a_ca_that_is_down_at_renewal_leaves_the_certificate_in_service(tmp_path: Path) -> None:
    http_port = free_port()
    with (
        pebble(tmp_path, http_port, validity=30) as ca,
        gateway(tmp_path, ca, http_port) as served,
    ):
        served.wait_for_line(r"event=acme-certificate-issued", timeout=60)
        served.wait_for_line(r"worker-1 event=certificate-changed")
        root = ca.fetch("/roots/0")
        first = certificate_info(DataDir(tmp_path / "data").acme_certificate_path.read_bytes())
        ca.stop()  # renewal is due 20 s into the certificate's life
        failed = served.wait_for_line(r"event=acme-failed", timeout=60)
        assert "stage=directory" in failed and "serving=acme" in failed, failed
        assert served_fingerprint(served.ports["smtps"]) == first.sha256
        assert served_fingerprint(served.ports["admin"]) == first.sha256
        with smtplib.SMTP_SSL(
            "localhost", served.ports["smtps"], timeout=20, context=trusting(root)
        ) as smtp:
            assert smtp.noop()[0] == 250
        assert (
            certificate_info(DataDir(tmp_path / "data").acme_certificate_path.read_bytes()) == first
        )
    failures = [
        e for e in control_events(tmp_path / "data") if isinstance(e, CertificateRenewalFailed)
    ]
    assert len(failures) == 1
    failure = failures[0]
    assert failure.stage == "directory" and failure.serving == "acme"
    assert failure.serving_sha256 == first.sha256 and failure.serving_not_after == first.not_after
    assert failure.failures == 1 and failure.retry_in == FIRST_RETRY
    assert "Connection refused" in failure.reason, failure.reason


def test_a_challenge_the_ca_cannot_verify_leaves_the_self_signed_certificate(
    tmp_path: Path,
) -> None:
    """Pebble validates http-01 on a port nobody answers on: no certificate, the self-signed
    one serves on, the failure is recorded."""
    nobody = free_port()
    with pebble(tmp_path, nobody) as ca, gateway(tmp_path, ca, free_port()) as served:
        failed = served.wait_for_line(r"event=acme-failed", timeout=90)
        assert "stage=challenge" in failed and "serving=self-signed" in failed, failed
        self_signed = certificate_info((tmp_path / "data" / "tls" / "cert.pem").read_bytes())
        assert served_fingerprint(served.ports["smtps"]) == self_signed.sha256
        assert served_fingerprint(served.ports["admin"]) == self_signed.sha256
        assert not DataDir(tmp_path / "data").acme_certificate_path.exists()
        assert count_lines(served, r"event=acme-certificate-issued") == 0
    failures = [
        e for e in control_events(tmp_path / "data") if isinstance(e, CertificateRenewalFailed)
    ]
    assert len(failures) == 1
    assert failures[0].stage == "challenge" and failures[0].serving == "self-signed"
    assert failures[0].serving_sha256 == self_signed.sha256
    assert "localhost" in failures[0].reason


# -- the http-01 responder and the schedule, on their own -----------------------------------


async def test_the_http01_responder_answers_only_tokens_being_asked_for() -> None:
    tokens = ChallengeTokens()
    tokens.add("tok-EN_1", "tok-EN_1.thumbprint")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    def ask(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
            return reply

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_acme_http, listeners, tokens.get)
        path = b"/.well-known/acme-challenge/"
        get = b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ok = await trio.to_thread.run_sync(ask, get % (path + b"tok-EN_1"))
        assert ok.startswith(b"HTTP/1.1 200 ") and ok.endswith(b"\r\n\r\ntok-EN_1.thumbprint")
        head = await trio.to_thread.run_sync(
            ask, b"HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n" % (path + b"tok-EN_1")
        )
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        for target in (path + b"other", path + b"../tok-EN_1", b"/tok-EN_1", path):
            reply = await trio.to_thread.run_sync(ask, get % target)
            assert reply.startswith(b"HTTP/1.1 404 "), (target, reply)
        post = await trio.to_thread.run_sync(
            ask, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % (path + b"tok-EN_1")
        )
        assert post.startswith(b"HTTP/1.1 405 ")
        bad = await trio.to_thread.run_sync(ask, b"NOT HTTP AT ALL\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400 ")
        huge = await trio.to_thread.run_sync(
            ask, b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
        )
        assert huge.startswith(b"HTTP/1.1 400 ")
        tokens.remove("tok-EN_1")
        gone = await trio.to_thread.run_sync(ask, get % (path + b"tok-EN_1"))
        assert gone.startswith(b"HTTP/1.1 404 ")
        nursery.cancel_scope.cancel()


def test_renewal_is_at_two_thirds_and_retries_back_off() -> None:
    pem = (
        trustme.CA().issue_cert("localhost").cert_chain_pems[0].bytes()
    )  # trustme: valid from now - 1 day (roughly) for years
    info = certificate_info(pem)
    due = renewal_time(info)
    lifetime = info.not_after - info.not_before
    assert abs((due - info.not_before) - lifetime * 2 / 3).total_seconds() < 1
    assert [retry_delay(n) for n in (1, 2, 3)] == [60.0, 120.0, 240.0]
    assert retry_delay(100) == MAX_RETRY == 6 * 3600


@pytest.mark.parametrize(
    ("acme", "message"),
    [
        ("directory = 'http://ca/dir'\nagree_terms = true", "https:// URL"),
        ("directory = 'https://ca/dir'", "agree_terms must be true"),
        ("directory = 'https://ca/dir'\nagree_terms = true\nhostnames = ['a b']", "not a host"),
        ("directory = 'https://ca/dir'\nagree_terms = true\ncontact = 'nobody'", "e-mail"),
        ("directory = 'https://ca/dir'\nagree_terms = true\nhttp_port = 0", "1 to 65535"),
        ("directory = 'https://ca/dir'\nagree_terms = true\nca_file = '/nonexistent'", "no such"),
        ("challenge = 'dns-01'", "$.tls.acme.challenge"),
        ("directoy = ''", "unknown field `directoy`"),
    ],
)
def test_acme_configuration_errors_name_the_key(tmp_path: Path, acme: str, message: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(f"[tls.acme]\n{acme}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_acme_and_a_configured_certificate_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(
        "[tls]\ncertificate = '/c.pem'\nkey = '/k.pem'\n"
        "[tls.acme]\ndirectory = 'https://ca/dir'\nagree_terms = true\n"
    )
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(path)
