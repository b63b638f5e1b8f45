"""Proxy logins and the target policy (SPEC.md 15.1): pure, so tested on their own."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.services.routing import (
    ProxyLogin,
    RoutingError,
    TargetPolicy,
    parse_proxy_login,
)

MAILBOX = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("login", "expected"),
    [
        (
            f"alice%mail.example.com%{MAILBOX}",
            ProxyLogin("alice", "mail.example.com", None, MAILBOX),
        ),
        (
            f"alice@example.com%MAIL.Example.com.:995%{MAILBOX.upper()}",
            ProxyLogin("alice@example.com", "mail.example.com", 995, MAILBOX),
        ),
        (f"a%b%203.0.113.7%{MAILBOX}", ProxyLogin("a%b", "203.0.113.7", None, MAILBOX)),
        (f"bob%203.0.113.7:110%{MAILBOX}", ProxyLogin("bob", "203.0.113.7", 110, MAILBOX)),
        (f"bob%[2001:DB8::1]%{MAILBOX}", ProxyLogin("bob", "2001:db8::1", None, MAILBOX)),
        (f"bob%[2001:db8::1]:587%{MAILBOX}", ProxyLogin("bob", "2001:db8::1", 587, MAILBOX)),
        (
            f"bob%host%mbx-{MAILBOX}@archive.example",
            ProxyLogin("bob", "host", None, MAILBOX),
        ),
    ],
)
def test_proxy_logins(login: str, expected: ProxyLogin) -> None:
    assert parse_proxy_login(login) == expected


def test_plain_logins_are_not_proxy_logins() -> None:
    assert parse_proxy_login(MAILBOX) is None
    assert parse_proxy_login(f"mbx-{MAILBOX}@localhost") is None


@pytest.mark.parametrize(
    "login",
    [
        f"host%{MAILBOX}",  # no remote user
        f"%host%{MAILBOX}",
        f"al ice%host%{MAILBOX}",
        "alice%host%not-a-mailbox",
        f"alice%%{MAILBOX}",
        f"alice%host:0%{MAILBOX}",
        f"alice%host:65536%{MAILBOX}",
        f"alice%host:http%{MAILBOX}",
        f"alice%[2001:db8::1%{MAILBOX}",
        f"alice%[not-v6]%{MAILBOX}",
        f"alice%[::1]x%{MAILBOX}",
        f"alice%-bad-.example%{MAILBOX}",
        f"alice%999.1.1.1%{MAILBOX}",
        f"alice%under_score.example%{MAILBOX}",
        f"alice%{'a' * 64}.example%{MAILBOX}",
    ],
)
def test_bad_proxy_logins(login: str) -> None:
    with pytest.raises(RoutingError):
        parse_proxy_login(login)


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    with contextlib.suppress(RoutingError):
        parse_proxy_login(text)


def test_default_policy_denies_internal_addresses() -> None:
    policy = TargetPolicy.build()
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::",
    ):
        with pytest.raises(RoutingError):
            policy.check("target", address)
    for address in ("203.0.113.7", "2001:db8::1", "8.8.8.8"):
        policy.check("target", address)


def test_ipv4_compatible_loopback_is_denied_like_the_other_loopback_forms() -> None:
    """[::127.0.0.1] (IPv4-compatible, deprecated) reached loopback: only ::/128 and ::1/128
    were denied. Every IPv6 form that carries an IPv4 address is checked as that address
    too, so a deny list written before (only 127.0.0.0/8) refuses them as well."""
    login = parse_proxy_login(f"user%[::127.0.0.1]:25%{'a' * 32}")
    assert login is not None
    for policy in (TargetPolicy.build(), TargetPolicy.build(deny=["127.0.0.0/8", "10.0.0.0/8"])):
        for address in (
            login.host,
            "::127.0.0.2",
            "::10.1.2.3",
            "::ffff:127.0.0.1",  # IPv4-mapped
            "2002:7f00:1::1",  # 6to4 around 127.0.0.1
            "2002:a01:203::1",  # 6to4 around 10.1.2.3
        ):
            with pytest.raises(RoutingError):
                policy.check("target", address)
    with pytest.raises(RoutingError):
        TargetPolicy.build().check("target", "64:ff9b:1::a01:203")  # local-use NAT64
    TargetPolicy.build().check("target", "2002:cb00:7107::1")  # 6to4 around 203.0.113.7


def test_allow_wins_over_deny_and_names_are_checked_before_dns() -> None:
    policy = TargetPolicy.build(
        allow=["127.0.0.1/32", "mail.internal"], deny=["127.0.0.0/8", "evil.example"]
    )
    policy.check("localhost", "127.0.0.1")
    with pytest.raises(RoutingError):
        policy.check("localhost", "127.0.0.2")
    policy.check("mail.internal", "10.0.0.5")  # allowed by name, whatever it resolves to
    with pytest.raises(RoutingError, match="deny list"):
        policy.check_name("evil.example")
    with pytest.raises(ValueError, match="neither"):
        TargetPolicy.build(deny=["not a network!"])
