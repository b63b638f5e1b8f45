"""The listeners' certificate from an ACME CA (RFC 8555; SPEC.md 12.4).

Theory of operation
-------------------
Runs in the journal, the process that owns the data folder. :class:`AcmeService` keeps one
certificate for the configured names in ``<data>/tls/acme/certificate.pem`` (chain and key in
one file, written whole and renamed into place: :class:`AcmeFiles`). Without one (the first
start) it asks the CA at once, while the listeners serve the self-signed certificate; with
one, it sleeps until two thirds of its lifetime have passed and then asks for the next. A new
certificate is checked (its names, its key), written, put in service in the journal's own
listeners (:meth:`TLSContextHolder.use`: new handshakes only, sessions keep theirs) and then
announced, so every protocol worker loads the same file; ``CertificateIssued`` records it.
Whatever fails on the way (the CA unreachable, a challenge it could not verify, an error of
its own, a certificate that does not fit) leaves the certificate in service as it is, is
logged and recorded as ``CertificateRenewalFailed``, and is tried again after a backoff of
1 minute doubling up to 6 hours.

The ACME conversation itself is certbot's ``acme`` package (with ``josepy`` for JWS), which
is blocking (``requests``): :func:`obtain` runs in a worker thread, abandoned if the gateway
stops meanwhile. Only the http-01 challenge is answered: the key authorizations it hands out
are put in :class:`ChallengeTokens`, which the journal's http-01 responder
(``servers.acme_http``) serves.
"""

from __future__ import annotations

import datetime
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import josepy
import requests
import trio
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from .. import __version__
from ..config import Config
from ..events import CertificateIssued, CertificateRenewalFailed, ControlEvent, now
from ..log import DataDir
from ..tls import CertificateInfo, TLSContextHolder, certificate_info

__all__ = [
    "AcmeFailure",
    "AcmeFiles",
    "AcmeService",
    "ChallengeTokens",
    "obtain",
    "renewal_time",
    "retry_delay",
]

logger = logging.getLogger("gateway")

RENEW_AT = 2 / 3  # of a certificate's lifetime (Let's Encrypt's advice: 60 of 90 days)
FIRST_RETRY = 60.0  # seconds after a first failure; doubling with each one in a row
MAX_RETRY = 6 * 3600.0
ORDER_TIMEOUT = 120.0  # seconds the CA gets to validate the challenges and issue
NETWORK_TIMEOUT = 30  # seconds for each request to the CA
WAKE_EVERY = 600.0  # a long wait looks at the wall clock again this often (suspend, clock set)
MAX_REASON = 1000  # characters of a failure's reason kept in its event


class AcmeFailure(Exception):
    """Obtaining a certificate failed at ``stage``; ``reason`` says why (for the log and the
    event)."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason[:MAX_REASON]


def renewal_time(info: CertificateInfo) -> datetime.datetime:
    """When a certificate is renewed: two thirds into its lifetime."""
    return info.not_before + (info.not_after - info.not_before) * RENEW_AT


def retry_delay(failures: int) -> float:
    """Seconds before the next attempt after ``failures`` failures in a row."""
    return min(MAX_RETRY, FIRST_RETRY * 2.0 ** max(failures - 1, 0))


class ChallengeTokens:
    """The http-01 key authorizations being asked for: token -> key authorization (RFC 8555
    8.3). Written by the thread that talks to the CA, read by the responder's event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, str] = {}

    def add(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def get(self, token: str) -> str | None:
        with self._lock:
            return self._tokens.get(token)


class AcmeFiles:
    """``<data>/tls/acme/``: the account key and the certificate, as the data folder keeps
    them (``DataDir``: each 0600, replaced whole)."""

    def __init__(self, data_dir: Path) -> None:
        self.data = DataDir(data_dir)
        self.certificate_path = self.data.acme_certificate_path

    def account_key(self) -> bytes:
        """The account's key (ECDSA P-256, PEM), made on first use and kept: the CA knows
        the account by it."""
        return self.data.read_or_create_acme_account_key(_new_key_pem)

    def certificate(self) -> CertificateInfo | None:
        """The certificate from the CA, if there is one that can be read."""
        pem = self.data.read_acme_certificate()
        if pem is None:
            return None
        try:
            return certificate_info(pem)
        except ValueError as exc:
            logger.error(
                "event=acme-certificate-unreadable path=%s reason=%r", self.certificate_path, exc
            )
            return None

    def write_certificate(self, pem: bytes) -> None:
        self.data.write_acme_certificate(pem)


def _new_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class AcmeRequest:
    """What one attempt asks of the CA."""

    directory: str
    names: tuple[str, ...]
    contact: str = ""
    ca_file: str = ""  # trusted for the CA's HTTPS instead of the default bundle


@dataclass(slots=True)
class _Progress:
    stage: str = "directory"  # where a failure happened
    tokens: list[str] = field(default_factory=list)  # handed to the responder


def obtain(request: AcmeRequest, account_key_pem: bytes, tokens: ChallengeTokens) -> bytes:
    """Blocking (run it in a thread): an account (made, or found by its key), an order for
    ``request.names``, their http-01 challenges answered through ``tokens``, and the issued
    certificate. Returns the chain followed by its new key (PEM). Raises AcmeFailure."""
    progress = _Progress()
    try:
        return _converse(request, account_key_pem, tokens, progress)
    except AcmeFailure:
        raise
    except errors.ValidationError as exc:
        raise AcmeFailure("challenge", " ".join(str(exc).split())) from None
    except errors.TimeoutError:
        raise AcmeFailure(
            progress.stage, f"the CA did not finish within {ORDER_TIMEOUT:.0f} s"
        ) from None
    except (
        errors.Error,
        josepy.errors.Error,
        requests.RequestException,
        OSError,
        ValueError,
    ) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise AcmeFailure(progress.stage, reason) from None
    except Exception as exc:
        # Whatever else a CA's odd answer makes the library raise (a directory without
        # newOrder is a KeyError) costs this attempt, never the journal that keeps the logs.
        logger.exception("event=acme-client-error stage=%s", progress.stage)
        raise AcmeFailure(progress.stage, f"{type(exc).__name__}: {exc}") from None
    finally:
        for token in progress.tokens:
            tokens.remove(token)


def _converse(
    request: AcmeRequest, account_key_pem: bytes, tokens: ChallengeTokens, progress: _Progress
) -> bytes:
    private_key = serialization.load_pem_private_key(account_key_pem, password=None)
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise AcmeFailure("account", "the account key is not an ECDSA key")
    account_key = JWKEC(key=private_key)
    net = client.ClientNetwork(
        account_key,
        alg=ES256,
        user_agent=f"mail-archiving-gateway/{__version__}",
        timeout=NETWORK_TIMEOUT,
    )
    if request.ca_file:
        # acme hands verify_ssl to requests' ``verify``, which also takes a CA bundle.
        net.verify_ssl = request.ca_file  # type: ignore[assignment]
    acme = client.ClientV2(client.ClientV2.get_directory(request.directory, net), net)
    progress.stage = "account"
    registration = messages.NewRegistration.from_data(
        email=request.contact or None, terms_of_service_agreed=True
    )
    try:
        acme.new_account(registration)
    except errors.ConflictError as exc:  # the key's account exists: use it
        net.account = messages.RegistrationResource(uri=exc.location, body=registration)
    progress.stage = "order"
    key_pem = _new_key_pem()
    order = acme.new_order(crypto_util.make_csr(key_pem, list(request.names)))
    progress.stage = "challenge"
    for authorization in order.authorizations:
        if authorization.body.status == messages.STATUS_VALID:
            continue  # the CA remembers an earlier validation (RFC 8555 7.1.4)
        name = authorization.body.identifier.value
        offered = [
            c for c in authorization.body.challenges if isinstance(c.chall, challenges.HTTP01)
        ]
        if not offered:
            raise AcmeFailure("challenge", f"the CA offers no http-01 challenge for {name}")
        challenge = offered[0]
        response, key_authorization = challenge.response_and_validation(account_key)
        token = challenge.chall.encode("token")
        tokens.add(token, key_authorization)
        progress.tokens.append(token)
        acme.answer_challenge(challenge, response)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
    order = acme.poll_authorizations(order, deadline)
    progress.stage = "finalize"
    order = acme.finalize_order(order, deadline)
    chain: str = order.fullchain_pem
    return chain.encode("ascii") + key_pem


def check_issued(pem: bytes, names: tuple[str, ...]) -> CertificateInfo:
    """The issued chain's leaf must name every configured name and go with the key beside
    it; raises AcmeFailure ("install") otherwise."""
    try:
        info = certificate_info(pem)
        leaf = x509.load_pem_x509_certificate(pem)
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise AcmeFailure("install", f"the CA's certificate cannot be read: {exc}") from None
    if not info.covers(names):
        raise AcmeFailure("install", f"the CA's certificate names {sorted(info.names)}")
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise AcmeFailure("install", "the CA's certificate is not for the key it was asked for")
    return info


class AcmeService:
    """Keeps the ACME certificate in service in this process (``holder``) and, through
    ``announce``, in every worker; records what happens with ``record``."""

    def __init__(
        self,
        config: Config,
        data_dir: Path,
        holder: TLSContextHolder,
        record: Callable[[ControlEvent], Awaitable[object]],
        announce: Callable[[], None],
    ) -> None:
        settings = config.tls.acme
        self.request = AcmeRequest(
            directory=settings.directory,
            names=settings.names(config.hostname),
            contact=settings.contact,
            ca_file=settings.ca_file,
        )
        self.files = AcmeFiles(data_dir)
        self.holder = holder
        self.record = record
        self.announce = announce
        self.tokens = ChallengeTokens()
        self.failures = 0  # in a row

    async def run(self) -> None:
        names = ",".join(self.request.names)
        while True:
            info = await trio.to_thread.run_sync(self.files.certificate)
            if info is None:
                logger.warning(
                    "event=acme-pending names=%s directory=%s reason='no certificate from the "
                    "CA yet: the self-signed certificate serves meanwhile'",
                    names,
                    self.request.directory,
                )
            elif not info.covers(self.request.names):
                logger.warning(
                    "event=acme-pending names=%s reason='the certificate names %s: a new one "
                    "is asked for, this one serves meanwhile'",
                    names,
                    ",".join(sorted(info.names)),
                )
            else:
                due = renewal_time(info)
                logger.info(
                    "event=acme-renewal-scheduled names=%s not_after=%s renew_at=%s",
                    names,
                    info.not_after.isoformat(timespec="seconds"),
                    due.isoformat(timespec="seconds"),
                )
                await _sleep_until(due)
            try:
                await self.renew(renewal=info is not None)
            except AcmeFailure as exc:
                await self._failed(exc)
            else:
                self.failures = 0

    async def renew(self, *, renewal: bool) -> CertificateInfo:
        """One attempt: obtain, check, write, serve, announce, record. Raises AcmeFailure
        with the certificate in service left as it was."""
        started = trio.current_time()
        try:
            account_key = await trio.to_thread.run_sync(self.files.account_key)
        except OSError as exc:
            raise AcmeFailure("account", f"the account key: {exc}") from None
        pem = await trio.to_thread.run_sync(
            functools.partial(obtain, self.request, account_key, self.tokens),
            abandon_on_cancel=True,
        )
        seconds = trio.current_time() - started
        info = check_issued(pem, self.request.names)
        path = self.files.certificate_path
        try:
            await trio.to_thread.run_sync(self.files.write_certificate, pem)
            await trio.to_thread.run_sync(self.holder.use, path, path)
        except OSError as exc:  # ssl.SSLError included
            raise AcmeFailure("install", str(exc)) from None
        self.announce()
        logger.info(
            "event=acme-certificate-issued names=%s sha256=%s issuer=%r not_after=%s "
            "seconds=%.1f renewal=%s",
            ",".join(self.request.names),
            info.sha256,
            info.issuer,
            info.not_after.isoformat(timespec="seconds"),
            seconds,
            str(renewal).lower(),
        )
        await self.record(
            CertificateIssued(
                at=now(),
                names=self.request.names,
                directory=self.request.directory,
                issuer=info.issuer,
                serial=info.serial,
                sha256=info.sha256,
                not_before=info.not_before,
                not_after=info.not_after,
                renewal=renewal,
                seconds=round(seconds, 3),
            )
        )
        return info

    async def _failed(self, exc: AcmeFailure) -> None:
        self.failures += 1
        delay = retry_delay(self.failures)
        path = self.holder.cert_path
        serving = "acme" if path == self.files.certificate_path else "self-signed"
        try:
            info: CertificateInfo | None = await trio.to_thread.run_sync(
                lambda: certificate_info(path.read_bytes())
            )
        except (OSError, ValueError):
            info = None
        logger.error(
            "event=acme-failed names=%s stage=%s reason=%r failures=%d retry_in=%.0f serving=%s",
            ",".join(self.request.names),
            exc.stage,
            exc.reason,
            self.failures,
            delay,
            serving,
        )
        await self.record(
            CertificateRenewalFailed(
                at=now(),
                names=self.request.names,
                directory=self.request.directory,
                stage=exc.stage,
                reason=exc.reason,
                failures=self.failures,
                retry_in=delay,
                serving=serving,
                serving_sha256=info.sha256 if info else "",
                serving_not_after=info.not_after if info else None,
            )
        )
        await trio.sleep(delay)


async def _sleep_until(when: datetime.datetime) -> None:
    """Sleep until a wall-clock time, looking at the clock again now and then (a suspended
    machine, or a clock set, must not push a renewal out)."""
    while True:
        left = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
        if left <= 0:
            return
        await trio.sleep(min(left, WAKE_EVERY))
