"""Journal intake: what the SMTP server asks the archive while a journaling MTA delivers.

Recipients are gateway mailbox addresses ``mbx-<id>@<mail domain>``; the decision for each
(and its reply, RFC 5321 §4.2 / RFC 3463 codes) is made here, the protocol machine only
carries it. The trace header the gateway prepends (RFC 5321 §4.4) is built here too: the one
change the stored message gets.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..ids import InvalidId, parse_mailbox_id
from .archive import NoSuchMailbox
from .projection import MailboxInfo

__all__ = ["RecipientDecision", "check_recipient", "received_header"]


@dataclass(frozen=True, slots=True)
class RecipientDecision:
    mailbox_id: str | None  # set when accepted
    code: int
    enhanced: str
    text: str

    @property
    def accepted(self) -> bool:
        return self.mailbox_id is not None


class Mailboxes(Protocol):
    """Where recipients are looked up: the archive, or a worker's view of it."""

    def mailbox(self, mailbox_id: str) -> MailboxInfo: ...

    def damaged(self, mailbox_id: str) -> str | None: ...


def check_recipient(archive: Mailboxes, mail_domain: str, address: str) -> RecipientDecision:
    """Accept an Active mailbox's address; a Suspended one is a temporary failure (the sender
    keeps the message and retries), anything else is unknown."""
    local, at, domain = address.rpartition("@")
    unknown = RecipientDecision(None, 550, "5.1.1", "No such mailbox here")
    if not at or domain.lower().rstrip(".") != mail_domain.lower().rstrip("."):
        return RecipientDecision(None, 550, "5.1.2", "Not a domain this gateway accepts mail for")
    if not local.lower().startswith("mbx-"):
        return unknown
    try:
        mailbox_id = parse_mailbox_id(local[4:])
        info: MailboxInfo = archive.mailbox(mailbox_id)
    except (InvalidId, NoSuchMailbox):
        return unknown
    if info.status != "active":
        return RecipientDecision(None, 450, "4.2.1", "Mailbox suspended, try again later")
    if archive.damaged(mailbox_id) is not None:
        # An operator has to look at it; meanwhile the sender keeps the message.
        return RecipientDecision(None, 451, "4.3.0", "Mailbox temporarily unavailable")
    return RecipientDecision(mailbox_id, 250, "2.1.5", "Recipient ok")


def received_header(
    *,
    helo: str,
    client_address: str,
    hostname: str,
    protocol: str,
    session_id: str,
    tls: str,
    recipient: str | None,
    when: datetime,
) -> bytes:
    """A Received: field (RFC 5321 §4.4, RFC 5322 §3.6.7) ending in CRLF, folded below 78
    octets. ``protocol`` is the RFC 3848 / RFC 6531 "with" keyword (ESMTP, ESMTPS, UTF8SMTPS,
    ...); the TLS version and cipher go in a comment, as Postfix writes them. No reverse DNS:
    the literal address is what was seen, and a lookup would put latency on every session."""
    literal = f"[{client_address}]" if ":" not in client_address else f"[IPv6:{client_address}]"
    lines = [f"Received: from {_atom(helo) or 'unknown'} ({literal})"]
    lines.append(f"\tby {hostname} (mail-archiving-gateway) with {protocol} id {session_id}")
    if tls:
        lines.append(f"\t({_comment(tls)})")
    date = email.utils.format_datetime(when)
    if recipient:
        lines.append(f"\tfor <{_comment(recipient)}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _atom(text: str) -> str:
    """A HELO argument as a header-safe token: printable, no spaces or parentheses."""
    return "".join(c for c in text[:255] if c.isprintable() and c not in " ()\\\r\n\t;")


def _comment(text: str) -> str:
    return "".join(c for c in text[:300] if c.isprintable() and c not in "()\\\r\n<>;")
