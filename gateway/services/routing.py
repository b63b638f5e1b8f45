"""Recording-proxy routing: who the client wants to reach, and whether the gateway may go
there. Pure (no sockets, no DNS): the proxy drivers resolve names and ask :meth:`TargetPolicy.
check` about every address before they connect to it, so a name that resolves to an internal
address is refused too (and a DNS answer cannot be swapped between the check and the connect,
since the driver connects to the address it checked).

A proxy login is ``remote_username%target_server%mailbox_id`` (SPEC.md 15.1): the mailbox id
is after the last ``%``, the target before it and after the one before; everything in front
is the remote username, which may hold ``@`` and ``%`` itself. The target is a host name, an
IPv4 address or a bracketed IPv6 address, with an optional ``:port``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..config import DEFAULT_DENY, split_targets
from ..ids import InvalidId, parse_mailbox_id

__all__ = [
    "DEFAULT_DENY",
    "ProxyLogin",
    "RoutingError",
    "TargetPolicy",
    "parse_proxy_login",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")


class RoutingError(ValueError):
    """A proxy login or target the gateway refuses; the message is for the log, never for
    the client (who gets a plain authentication failure)."""


@dataclass(frozen=True, slots=True)
class ProxyLogin:
    remote_user: str
    host: str  # a host name (lowercase) or an IP address (IPv6 without brackets)
    port: int | None  # None: the protocol's default for the TLS mode
    mailbox_id: str

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_proxy_login(login: str, *, domain: str | None = None) -> ProxyLogin | None:
    """The parts of a proxy login, or None if ``login`` has no ``%`` (a plain mailbox login).
    With ``domain``, a mailbox address must be in it (``ids.parse_mailbox_id``). Raises
    RoutingError for a login that has the form but not valid parts."""
    if "%" not in login:
        return None
    head, _, mailbox = login.rpartition("%")
    remote_user, sep, target = head.rpartition("%")
    if not sep:
        raise RoutingError("a proxy login is remote_username%target_server%mailbox_id")
    if not remote_user or any(ord(c) < 0x21 or c == "\x7f" for c in remote_user):
        raise RoutingError("the remote username is empty or holds spaces or control characters")
    try:
        mailbox_id = parse_mailbox_id(mailbox, domain=domain)
    except InvalidId as exc:
        raise RoutingError(str(exc)) from None
    host, port = _parse_target(target)
    return ProxyLogin(remote_user, host, port, mailbox_id)


def _parse_target(target: str) -> tuple[str, int | None]:
    port: int | None = None
    if target.startswith("["):
        end = target.find("]")
        if end < 0:
            raise RoutingError(f"target {target!r}: an IPv6 address needs its closing bracket")
        host, rest = target[1:end], target[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise RoutingError(f"target {target!r}: not an IPv6 address") from None
        if rest:
            if not rest.startswith(":"):
                raise RoutingError(f"target {target!r}: junk after the address")
            port = _parse_port(rest[1:], target)
        return host.lower(), port
    host, colon, port_text = target.partition(":")
    if colon:
        port = _parse_port(port_text, target)
    try:
        return str(ipaddress.IPv4Address(host)), port
    except ValueError:
        pass
    name = host.rstrip(".").lower()
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise RoutingError(f"target {target!r}: not a host name, IPv4 or [IPv6] address")
    if labels[-1].isdigit():
        raise RoutingError(f"target {target!r}: not a valid IPv4 address")
    return name, port


def _parse_port(text: str, target: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise RoutingError(f"target {target!r}: the port must be 1 to 65535")
    return int(text)


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """Which upstream addresses the proxy may connect to. ``allow`` wins over ``deny``; both
    are networks (CIDR) or host names. A host name on ``deny`` refuses it before any DNS
    lookup; on ``allow`` it permits any address it resolves to."""

    allow_networks: tuple[IPNetwork, ...] = ()
    deny_networks: tuple[IPNetwork, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    deny_hosts: frozenset[str] = frozenset()

    @classmethod
    def build(cls, allow: Iterable[str] = (), deny: Iterable[str] = DEFAULT_DENY) -> TargetPolicy:
        """From configuration strings. Raises ValueError naming a bad entry."""
        allow_networks, allow_hosts = split_targets(allow)
        deny_networks, deny_hosts = split_targets(deny)
        return cls(allow_networks, deny_networks, allow_hosts, deny_hosts)

    def check_name(self, host: str) -> None:
        """Before resolving: refuse a denied host name. Raises RoutingError."""
        if host in self.deny_hosts and host not in self.allow_hosts:
            raise RoutingError(f"target {host} is on the deny list")

    def check(self, host: str, address: str) -> None:
        """Before connecting to ``address`` (what ``host`` resolved to, or ``host`` itself).
        Raises RoutingError."""
        self.check_name(host)
        if host in self.allow_hosts:
            return
        ip = _address(address)
        if any(ip in network for network in self.allow_networks if ip.version == network.version):
            return
        for candidate in (ip, *_embedded_ipv4(ip)):
            for network in self.deny_networks:
                if candidate.version == network.version and candidate in network:
                    raise RoutingError(f"target {host} ({address}) is in denied network {network}")


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, each checked like the IPv4 address itself:
    IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and 6to4 (2002:aabb:ccdd::)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [ip.ipv4_mapped, ip.sixtofour]
    if int(ip) >> 32 == 0:  # ::/96
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [address for address in found if address is not None]


def _address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone index
    except ValueError:
        raise RoutingError(f"{text!r} is not an IP address") from None
