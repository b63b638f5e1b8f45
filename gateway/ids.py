"""Identifiers: mailbox ids and message ids.

A mailbox id is 32 lowercase hex characters (a random UUID without dashes, as the product this
is modelled on shows them). It becomes a directory name, so it is validated strictly before it
comes near a path: no case folding tricks, no separators, no length games. The all-zero id is
the control log's (its log id is 16 zero bytes, SPEC.md 2 and 3.1): never a mailbox's.
"""

from __future__ import annotations

import re
import secrets
import uuid

__all__ = [
    "RESERVED_ID",
    "InvalidId",
    "mailbox_address",
    "new_mailbox_id",
    "new_message_id",
    "parse_mailbox_id",
    "parse_message_id",
]

_HEX32 = re.compile(r"[0-9a-f]{32}")
RESERVED_ID = "0" * 32  # the control log's log id; no mailbox has it
_ADDRESS = re.compile(r"mbx-([0-9a-f]{32})@(.+)", re.IGNORECASE)


class InvalidId(ValueError):
    """A mailbox or message id that is not 32 hex characters, or the reserved all-zero one."""


def parse_mailbox_id(text: str, *, domain: str | None = None) -> str:
    """Accept a mailbox id or its address ``mbx-<id>@<domain>``, in any case; return the
    canonical lowercase id. With ``domain`` (the gateway's mail domain), an address in any
    other domain is refused: a login names this gateway's mailboxes only. Anything else
    raises InvalidId, whose message is safe to show."""
    if not isinstance(text, str) or len(text) > 320:
        raise InvalidId("a mailbox id is 32 hexadecimal characters")
    match = _ADDRESS.fullmatch(text)
    if match and domain is not None and not _same_domain(match.group(2), domain):
        raise InvalidId(f"not a mailbox address of {domain}")
    candidate = (match.group(1) if match else text).lower()
    if not _HEX32.fullmatch(candidate):
        raise InvalidId("a mailbox id is 32 hexadecimal characters")
    if candidate == RESERVED_ID:
        raise InvalidId("the all-zero id is reserved (it is the control log's): no mailbox has it")
    return candidate


def _same_domain(given: str, domain: str) -> bool:
    # ASCII case only: a Unicode case mapping must not make another domain this one.
    return given.isascii() and given.lower() == domain.lower()


def parse_message_id(text: str) -> str:
    if not isinstance(text, str) or not _HEX32.fullmatch(text):
        raise InvalidId("a message id is 32 lowercase hexadecimal characters")
    return text


def new_mailbox_id() -> str:
    return uuid.uuid4().hex


def new_message_id() -> str:
    # Random rather than sequential: it is the POP3 UIDL, stable forever and unique across
    # gateways, so an archive that polls several gateways never sees a collision.
    return secrets.token_hex(16)


def mailbox_address(mailbox_id: str, domain: str) -> str:
    return f"mbx-{mailbox_id}@{domain}"
