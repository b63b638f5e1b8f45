"""The seam between protocol workers and the journal (SPEC.md 16).

The SMTP and POP3 servers see the store only through :class:`StoreClient`: the mailboxes as
the journal pushes them, sealing and opening in the worker's own process, and requests to the
journal (the only writer of every log) over one connection in the journal protocol
(``_wire``). :class:`Journal` serves those connections against the archive. A one-process
gateway runs both ends over a socket pair: the same code paths, the same seam.
"""

from __future__ import annotations

from ._client import StoreClient, StoreLimits
from ._journal import AUDIT_EVENTS, Journal
from ._maildrop import Maildrop
from ._wire import MAX_FRAME, PROTOCOL_VERSION, FrameError, MailboxView, MessageEntry

__all__ = [
    "AUDIT_EVENTS",
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "FrameError",
    "Journal",
    "MailboxView",
    "Maildrop",
    "MessageEntry",
    "StoreClient",
    "StoreLimits",
]
