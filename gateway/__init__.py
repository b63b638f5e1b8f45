"""Email archiving gateway: journal target, recording proxy and POP3 retrieval over an
encrypted, append-only, per-mailbox segment log."""

from __future__ import annotations

__version__ = "0.1.0"
