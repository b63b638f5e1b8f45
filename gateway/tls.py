"""TLS for the listeners: the certificate (configured, or self-signed and kept in the data
folder), and server SSL contexts that SIGHUP can replace without dropping sessions.

A :class:`TLSContextHolder` is what listeners hold; each new handshake uses its ``context``,
so reloading swaps the context for new connections while established ones keep theirs. The
same swap puts a certificate from an ACME CA in service (``services.acme`` obtains it in the
journal and writes ``DataDir.acme_certificate_path``: its chain and key in one file, so a single
rename replaces both and no reader ever sees a certificate beside another's key).

Every context the gateway makes, server or client (:func:`server_context`, the admin command
line's, the proxies' toward upstream), speaks TLS 1.2 or 1.3 with AEAD suites only
(:func:`use_aead_only`): TLS 1.3's suites all are; for TLS 1.2 that means ECDHE or DHE with
AES-GCM or ChaCha20-Poly1305. The CBC suites OpenSSL would otherwise still offer in TLS 1.2
are MAC-then-encrypt, the construction behind Lucky Thirteen and the padding oracles.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .tlsstream import is_tls

__all__ = [
    "AEAD_CIPHERS",
    "CertificateInfo",
    "TLSContextHolder",
    "certificate_info",
    "certificate_summary",
    "make_self_signed",
    "server_context",
    "use_aead_only",
]

SELF_SIGNED_DAYS = 3650

# TLS 1.2 suites (OpenSSL syntax): forward-secret key exchange, AEAD only, as Mozilla's
# "intermediate" profile. TLS 1.3 suites are set apart by OpenSSL and are all AEAD.
AEAD_CIPHERS = (
    "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"  # key exchange + AEAD
    ":!aNULL:!eNULL:!aDSS"  # never anonymous, never unencrypted, no DSA
)


def make_self_signed(hostname: str, addresses: Iterable[str] = ()) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate for ``hostname`` (and localhost, 127.0.0.1, and
    the specific ``addresses`` the gateway listens on): (certificate PEM, key PEM). MTAs that
    journal with opportunistic TLS accept it; those that verify can pin its fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt_names.append(x509.DNSName("localhost"))
    ips = [ipaddress.ip_address("127.0.0.1")]
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:  # a listener on a host name
            if x509.DNSName(address) not in alt_names:
                alt_names.append(x509.DNSName(address))
            continue
        if not ip.is_unspecified and ip not in ips:
            ips.append(ip)
    alt_names += [x509.IPAddress(ip) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def certificate_summary(cert_path: Path) -> tuple[str, str, datetime.datetime]:
    """(subject, SHA-256 fingerprint as colon hex, expiry) of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return cert.subject.rfc4514_string(), fingerprint, cert.not_valid_after_utc


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What the log lines and the certificate events say of a certificate."""

    subject: str
    issuer: str
    serial: str  # hex
    sha256: str  # colon hex
    not_before: datetime.datetime
    not_after: datetime.datetime
    names: frozenset[str]  # its DNS subject alternative names, lowercase

    def covers(self, names: tuple[str, ...]) -> bool:
        return {name.lower() for name in names} <= self.names


def certificate_info(pem: bytes) -> CertificateInfo:
    """The first certificate of a PEM file (the leaf of a chain; a key beside it is skipped)."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = frozenset(name.lower() for name in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = frozenset()
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial=f"{cert.serial_number:x}",
        sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        names=names,
    )


def use_aead_only(context: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 or later (RFC 8996 retired the older ones) with AEAD suites only (see the
    module docstring), for a server or a client context; returns ``context``."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(AEAD_CIPHERS)
    return context


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """TLS 1.2 and 1.3 only, AEAD suites only, no compression, no renegotiation."""
    context = use_aead_only(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert_path, key_path)
    return context


class TLSContextHolder:
    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.context = server_context(cert_path, key_path)

    def reload(self) -> None:
        """Load the certificate and key again (after a renewal). On error the old context
        stays and the exception tells why."""
        self.context = server_context(self.cert_path, self.key_path)

    def use(self, cert_path: Path, key_path: Path) -> None:
        """Serve another certificate from now on (new handshakes; sessions keep theirs), and
        reload it from these files hereafter. On error nothing changes."""
        context = server_context(cert_path, key_path)
        self.cert_path, self.key_path, self.context = cert_path, key_path, context

    def summary(self) -> tuple[str, str, datetime.datetime]:
        return certificate_summary(self.cert_path)


def describe_tls(stream: trio.abc.Stream) -> str:
    """``"TLSv1.3 TLS_AES_256_GCM_SHA384"`` for a TLS stream, ``""`` for a plain one: what
    the audit events and the Received field record."""
    if not is_tls(stream):
        return ""
    try:
        version = stream.version()
        cipher = stream.cipher()
    except (ssl.SSLError, AttributeError, trio.NeedHandshakeError):
        return ""
    return f"{version} {cipher[0]}" if version and cipher else ""
