"""Configuration: a TOML file decoded into typed, frozen structs.

Without a file the gateway runs on its embedded default (what ``make run`` starts): data under
``./var``, a self-signed certificate made on first start, mail domain ``localhost``, and
unprivileged ports on 127.0.0.1. Every key is documented in ``ops/gateway.example.toml`` and
SPEC.md section 10; an unknown key is an error that names it, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import msgspec

from .crypto import KdfParams

__all__ = [
    "DEFAULT_DENY",
    "AcmeSettings",
    "AdminConfig",
    "Config",
    "ConfigError",
    "ListenerConfig",
    "POP3Config",
    "Protocol",
    "ProxyConfig",
    "SMTPConfig",
    "StoreSettings",
    "TLSConfig",
    "TLSMode",
    "default_source_key_path",
    "load_config",
    "split_targets",
]


# What the gateway refuses to reach unless the configuration allows it: loopback, private
# and shared address space, link-local (cloud metadata services live there), multicast,
# unspecified and reserved ranges, and IPv6's equivalents (RFC 6890), with the IPv6 forms that
# carry an IPv4 address: IPv4-mapped, IPv4-compatible (::a.b.c.d, deprecated by RFC 4291
# §2.5.5.1; [::127.0.0.1] reaches loopback), and the NAT64 prefixes (RFC 6052, RFC 8215).
DEFAULT_DENY: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
    "::/128",
    "::1/128",
    "::/96",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the key."""


class Protocol(enum.StrEnum):
    SMTP = "smtp"
    POP3 = "pop3"  # retrieval: the archive fetches and deletes (STLS or implicit TLS)
    ADMIN = "admin"  # HTTPS: the console page and the websocket API (implicit TLS only)


class TLSMode(enum.StrEnum):
    STARTTLS = "starttls"  # plain first; STARTTLS (RFC 3207) upgrades
    IMPLICIT = "implicit"  # TLS from the first byte (SMTPS, RFC 8314)


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ListenerConfig(_Section, frozen=True, kw_only=True):
    name: str
    protocol: Protocol
    address: str = "127.0.0.1"
    port: int
    tls: TLSMode = TLSMode.STARTTLS

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not a TCP port")


class AcmeSettings(_Section, frozen=True, kw_only=True):
    """A certificate from an ACME CA (RFC 8555; SPEC.md 12.4): off while ``directory`` is
    empty. The journal obtains it, renews it at two thirds of its lifetime and swaps it into
    every listener; the self-signed certificate serves until the first one comes."""

    directory: str = ""  # the CA's directory URL (https://...); empty: off
    agree_terms: bool = False  # the CA's terms of service are agreed to (required when on)
    contact: str = ""  # an e-mail address for the account (the CA's expiry notices); optional
    hostnames: tuple[str, ...] = ()  # the certificate's names; empty: [hostname]
    challenge: Literal["http-01"] = "http-01"  # RFC 8555 8.3; tls-alpn-01 is not offered
    http_address: str = ""  # where the http-01 responder listens; empty: every address
    http_port: int = 80  # RFC 8555 8.3: the CA asks on port 80
    # PEM bundle trusted for the CA's own HTTPS instead of the default bundle (certifi's,
    # through requests): a private CA, or a test CA such as pebble's.
    ca_file: str = ""

    def names(self, hostname: str) -> tuple[str, ...]:
        """The names the certificate is for."""
        return self.hostnames or (hostname,)


class TLSConfig(_Section, frozen=True, kw_only=True):
    # Empty paths: a self-signed certificate is generated under <data_dir>/tls on first start.
    certificate: str = ""
    key: str = ""
    acme: AcmeSettings = AcmeSettings()


class SMTPConfig(_Section, frozen=True, kw_only=True):
    require_tls: bool = False  # journal intake only after STARTTLS (530 5.7.0 before)
    max_message_size: int = 100 * 1024 * 1024
    max_recipients: int = 1000
    max_sessions: int = 500
    max_sessions_per_client: int = 50
    bare_newline: Literal["normalize", "reject"] = "normalize"
    bad_command_budget: int = 20
    # RFC 5321 §4.5.3.2: 5 min for commands, 10 min for DATA termination; the initial
    # greeting wait and the per-block DATA timeout are 5 and 3 min.
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    # Recording proxy logins (AUTH): a failure is answered this long after it arrived, and
    # this many failures in a row (per client address, and per username) lock out for 60 s,
    # doubling up to 15 minutes.
    auth_failure_delay: float = 2.0
    max_auth_failures: int = 10


class POP3Config(_Section, frozen=True, kw_only=True):
    max_sessions: int = 200
    max_sessions_per_client: int = 20
    # RFC 1939 §3: an autologout timer of at least 10 minutes.
    idle_timeout: float = 600.0
    bad_command_budget: int = 10
    # A failed login is answered this long after it arrived, found mailbox or not.
    failure_delay: float = 2.0
    # Failures in a row (per client address, and per username) before a lockout of 60 s that
    # doubles with each further failure, up to 15 minutes.
    max_failures: int = 10
    # Argon2id unlocks running at once (each takes store.kdf.memory_kib of memory).
    max_unlocks: int = 4


class ProxyConfig(_Section, frozen=True, kw_only=True):
    # Upstream targets: networks (CIDR) or host names. allow wins over deny; the default deny
    # list is the special-purpose address space (loopback, private, link-local, ...).
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = DEFAULT_DENY
    ca_files: tuple[str, ...] = ()  # trusted besides the system store
    insecure_targets: tuple[str, ...] = ()  # host names whose certificate is NOT checked
    connect_timeout: float = 30.0
    upstream_timeout: float = 120.0  # one upstream reply or read
    # The SMTP target's reply to the end of a message: RFC 5321 §4.5.3.2.6 asks for 10
    # minutes (a client that gives up sooner causes duplicate deliveries).
    final_reply_timeout: float = 600.0
    # The POP3 proxy's source-key secret (services.source_keys): outside the data folder.
    # Empty: <data_dir>-secret/source-key, beside the data folder. Made on the first start.
    source_key_secret_file: str = ""


class AdminConfig(_Section, frozen=True, kw_only=True):
    # First start only: the admin password is read from this file (GATEWAY_ADMIN_PASSWORD
    # wins over it); without either, a random one is shown once: on the terminal, or (under
    # systemd, or without a terminal) in <data_dir>/admin/initial-password (SPEC.md 13.2).
    password_file: str = ""
    # Browser origins allowed besides https://<hostname|localhost|127.0.0.1>:<port>.
    allowed_origins: tuple[str, ...] = ()
    session_hours: float = 8.0
    max_connections: int = 32
    audit_queue: int = (
        10_000  # records a live audit subscriber may fall behind before it is dropped
    )


class KdfSettings(_Section, frozen=True, kw_only=True):
    # Argon2id for new key wraps and the admin password's hash: at least 19 MiB and 2 passes,
    # at most 1 GiB, 16 passes, 16 lanes (SPEC.md 5.1).
    memory_kib: int = 65536
    iterations: int = 3
    lanes: int = 4
    # For test suites only: lets memory_kib and iterations go below the floor (down to
    # RFC 9106's minimum) so tests run fast. Logged as a warning at start; never in production.
    insecure_fast_for_tests: bool = False

    def params(self) -> KdfParams:
        return KdfParams(memory_kib=self.memory_kib, iterations=self.iterations, lanes=self.lanes)


class StoreSettings(_Section, frozen=True, kw_only=True):
    segment_bytes: int = 64 * 1024 * 1024
    compaction_grace: float = 12 * 3600.0
    maintenance_interval: float = 600.0
    # Control-log history kept in the data folder behind its recovery point (SPEC.md 6.8):
    # older sealed segments move to control/archive/. 0 keeps all of it there.
    control_history_bytes: int = 0
    # Intake answers 452 4.3.1 while the data folder's file system has less free (SPEC.md
    # 13.8): a full disk is never reached by mail, and what is stored stays readable.
    min_free_bytes: int = 1 << 30
    # Where the logs, key files and custody are kept (SPEC.md 17): "local", the data folder;
    # "postgresql", the fleet store at ``dsn`` (a libpq connection string, multi-host with
    # target_session_attrs=read-write for failover; its password best in a passfile, or the
    # whole string in $GATEWAY_STORE_DSN). The data folder then holds only the node's own.
    backend: Literal["local", "postgresql"] = "local"
    dsn: str = ""
    # This node's name among the nodes of a fleet store, in its audit records (GatewayStarted,
    # GatewayStopped) and as the store's writer (SPEC.md 17.5: each node needs its own);
    # empty: the machine's host name.
    node: str = ""
    kdf: KdfSettings = KdfSettings()


class CustodySettings(_Section, frozen=True, kw_only=True):
    # Seconds between two signed checkpoints of the control log's Merkle tree (SPEC.md 8.1);
    # one is also signed at a clean shutdown. 0: only then.
    checkpoint_interval: float = 3600.0


class AlarmSettings(_Section, frozen=True, kw_only=True):
    # Every mailbox's backlog alarms (SPEC.md 13.8), unless it sets its own; 0 turns one off.
    max_waiting_age: float = 2 * 86400.0  # seconds the oldest waiting message may wait
    max_waiting_bytes: int = 0  # octets that may wait
    expect_mail_every: float = 0.0  # seconds without new mail before intake counts as quiet
    check_interval: float = 60.0  # seconds between two looks at every mailbox


DEFAULT_LISTENERS = (
    ListenerConfig(name="smtp", protocol=Protocol.SMTP, port=2525, tls=TLSMode.STARTTLS),
    ListenerConfig(name="smtps", protocol=Protocol.SMTP, port=2465, tls=TLSMode.IMPLICIT),
    ListenerConfig(name="submission", protocol=Protocol.SMTP, port=2587, tls=TLSMode.STARTTLS),
    ListenerConfig(name="pop3", protocol=Protocol.POP3, port=1110, tls=TLSMode.STARTTLS),
    ListenerConfig(name="pop3s", protocol=Protocol.POP3, port=1995, tls=TLSMode.IMPLICIT),
    ListenerConfig(name="admin", protocol=Protocol.ADMIN, port=8450, tls=TLSMode.IMPLICIT),
)


class ServerConfig(_Section, frozen=True, kw_only=True):
    # Protocol worker processes (SPEC.md 16): "auto" is one per usable core; 0 runs the
    # journal and the protocol servers in one process.
    workers: int | Literal["auto"] = "auto"

    def worker_count(self) -> int:
        if self.workers == "auto":
            return len(os.sched_getaffinity(0))
        return self.workers


class Config(_Section, frozen=True, kw_only=True):
    data_dir: str = "var"
    mail_domain: str = "localhost"
    hostname: str = "localhost"
    shutdown_grace: float = 30.0
    listeners: tuple[ListenerConfig, ...] = DEFAULT_LISTENERS
    tls: TLSConfig = TLSConfig()
    smtp: SMTPConfig = SMTPConfig()
    pop3: POP3Config = POP3Config()
    proxy: ProxyConfig = ProxyConfig()
    admin: AdminConfig = AdminConfig()
    store: StoreSettings = StoreSettings()
    alarms: AlarmSettings = AlarmSettings()
    custody: CustodySettings = CustodySettings()
    server: ServerConfig = ServerConfig()

    def source_key_path(self) -> Path:
        """Where the POP3 proxy's source-key secret lives (SPEC.md 5.5)."""
        if self.proxy.source_key_secret_file:
            return Path(self.proxy.source_key_secret_file)
        return default_source_key_path(self.data_dir)


def default_source_key_path(data_dir: str | Path) -> Path:
    """``source-key`` in the folder ``<data folder>-secret`` beside the data folder (for a
    data folder ``/var/lib/gateway``: ``/var/lib/gateway-secret/source-key``)."""
    data = Path(data_dir).resolve()
    return data.parent / f"{data.name}-secret" / "source-key"


def split_targets(
    entries: Iterable[str],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...], frozenset[str]]:
    """A ``proxy.allow`` or ``proxy.deny`` list: its networks (CIDR) and its host names
    (lowercase, without a final dot). Raises ValueError naming a bad entry."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    hosts: set[str] = set()
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            name = entry.rstrip(".").lower()
            if not name or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
                raise ValueError(f"{entry!r} is neither a network nor a host name") from None
            hosts.add(name)
    return tuple(networks), frozenset(hosts)


def load_config(path: Path | None, *, data_dir: Path | None = None) -> Config:
    """The file's configuration (or the embedded default), with ``--data-dir`` on top."""
    config = Config()
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        try:
            config = msgspec.convert(raw, Config)
        except msgspec.ValidationError as exc:
            # msgspec names the key: "Object contains unknown field `prot` - at `$.smtp`"
            raise ConfigError(f"{path}: {exc}") from None
    if data_dir is not None:
        config = msgspec.structs.replace(config, data_dir=str(data_dir))
    _check(config, path)
    return config


def _check(config: Config, path: Path | None) -> None:
    where = str(path) if path else "embedded default"
    names = [listener.name for listener in config.listeners]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: listener names must be unique")
    bound = [(listener.address, listener.port) for listener in config.listeners if listener.port]
    if len(set(bound)) != len(bound):
        raise ConfigError(f"{where}: two listeners on the same address and port")
    for listener in config.listeners:
        if listener.protocol == Protocol.ADMIN and listener.tls != TLSMode.IMPLICIT:
            raise ConfigError(f"{where}: listener {listener.name}: the admin listener is TLS only")
    if sum(listener.protocol == Protocol.ADMIN for listener in config.listeners) > 1:
        raise ConfigError(f"{where}: at most one admin listener")
    pop3 = config.pop3
    if pop3.idle_timeout < 600:
        raise ConfigError(f"{where}: pop3.idle_timeout must be at least 600 (RFC 1939 section 3)")
    if pop3.bad_command_budget < 1 or pop3.max_failures < 1 or pop3.max_unlocks < 1:
        raise ConfigError(
            f"{where}: pop3.bad_command_budget, max_failures and max_unlocks must be at least 1"
        )
    if not 0 <= pop3.failure_delay <= 60:
        raise ConfigError(f"{where}: pop3.failure_delay must be 0 to 60 seconds")
    if not 0 <= config.smtp.auth_failure_delay <= 60:
        raise ConfigError(f"{where}: smtp.auth_failure_delay must be 0 to 60 seconds")
    if config.smtp.max_auth_failures < 1:
        raise ConfigError(f"{where}: smtp.max_auth_failures must be at least 1")
    try:
        split_targets(config.proxy.allow)
        split_targets(config.proxy.deny)
    except ValueError as exc:
        raise ConfigError(f"{where}: proxy.allow / proxy.deny: {exc}") from None
    if not 1 <= config.admin.max_connections <= 10_000:
        raise ConfigError(f"{where}: admin.max_connections must be 1 to 10000")
    if not 0.1 <= config.admin.session_hours <= 24 * 30:
        raise ConfigError(f"{where}: admin.session_hours must be 0.1 to 720")
    if config.admin.audit_queue < 100:
        raise ConfigError(f"{where}: admin.audit_queue must be at least 100")
    if bool(config.tls.certificate) != bool(config.tls.key):
        raise ConfigError(f"{where}: tls.certificate and tls.key go together")
    _check_acme(config, where)
    if config.smtp.max_recipients < 100:
        raise ConfigError(f"{where}: smtp.max_recipients must be at least 100 (RFC 5321 4.5.3.1.8)")
    if config.smtp.max_message_size < 64 * 1024:
        raise ConfigError(f"{where}: smtp.max_message_size must be at least 65536")
    if config.store.control_history_bytes < 0:
        raise ConfigError(f"{where}: store.control_history_bytes must be 0 or more")
    if config.store.min_free_bytes < 0:
        raise ConfigError(f"{where}: store.min_free_bytes must be 0 or more")
    alarms = config.alarms
    if min(alarms.max_waiting_age, alarms.max_waiting_bytes, alarms.expect_mail_every) < 0:
        raise ConfigError(f"{where}: alarms thresholds must be 0 (off) or more")
    if config.custody.checkpoint_interval < 0:
        raise ConfigError(f"{where}: custody.checkpoint_interval must be 0 or more")
    if not 1.0 <= alarms.check_interval <= 3600.0:
        raise ConfigError(f"{where}: alarms.check_interval must be 1 to 3600")
    if config.server.workers != "auto" and not 0 <= config.server.workers <= 256:
        raise ConfigError(f"{where}: server.workers must be 0 to 256")
    if config.source_key_path().resolve().is_relative_to(Path(config.data_dir).resolve()):
        raise ConfigError(
            f"{where}: proxy.source_key_secret_file must be outside the data folder "
            "(a copy of the data folder alone must not confirm guesses: SPEC.md 5.5)"
        )
    kdf = config.store.kdf
    try:
        if kdf.insecure_fast_for_tests:
            kdf.params().validate()  # the ceiling still holds
        else:
            kdf.params().validate_for_production()
    except ValueError as exc:
        raise ConfigError(f"{where}: store.kdf: {exc}") from None


def _check_acme(config: Config, where: str) -> None:
    acme = config.tls.acme
    if not acme.directory:
        return
    if not acme.directory.startswith("https://"):
        raise ConfigError(f"{where}: tls.acme.directory must be an https:// URL (RFC 8555 6.1)")
    if config.tls.certificate:
        raise ConfigError(f"{where}: tls.acme and tls.certificate exclude each other")
    if not acme.agree_terms:
        raise ConfigError(
            f"{where}: tls.acme.agree_terms must be true: the CA's terms of service (its "
            "directory's meta.termsOfService) are agreed to when the account is made"
        )
    for name in acme.names(config.hostname):
        labels = name.split(".")
        if name.endswith(".") or not all(_HOST_LABEL.fullmatch(label) for label in labels):
            raise ConfigError(f"{where}: tls.acme.hostnames: {name!r} is not a host name")
    if acme.contact and not re.fullmatch(r"[^@\s:/]+@[^@\s:/]+", acme.contact):
        raise ConfigError(f"{where}: tls.acme.contact must be an e-mail address")
    if not 1 <= acme.http_port <= 65535:
        raise ConfigError(f"{where}: tls.acme.http_port must be 1 to 65535")
    if acme.ca_file and not Path(acme.ca_file).is_file():
        raise ConfigError(f"{where}: tls.acme.ca_file {acme.ca_file}: no such file")
