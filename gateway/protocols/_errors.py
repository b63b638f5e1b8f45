"""Errors, split as h11's ``_util.py`` splits them; one implementation for both protocols.

A :class:`LocalProtocolError` means the driver broke a machine's contract (``send()`` with
nothing to answer, a reply that cannot answer the pending command); the machine's state is left
as it was, so the error is a bug report, not a session failure.

A :class:`RemoteProtocolError` means the peer sent something the protocol does not allow. It
carries the reply that answers it (h11's ``error_status_hint``: an SMTP reply, a POP3
``-ERR``). A server machine catches these itself and turns them into queued replies or a
``ConnectionClosed`` event, so its driver never sees one; a client machine and its reply
reader raise them with ``reply=None`` (a client has nobody to reply to) and ``temporary``,
which says whether a later try may help.

Each protocol subclasses these with its own reply type (``smtp._util``, ``pop3._util``), so
``except smtp.RemoteProtocolError`` never catches a POP3 error, while code that serves both
(the upstream driver) may catch the shared classes here.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]

R = TypeVar("R")


class ProtocolError(Exception, Generic[R]):
    def __init__(self, message: str, reply: R | None = None, *, temporary: bool = True) -> None:
        if not isinstance(self, LocalProtocolError | RemoteProtocolError):
            raise TypeError("instantiate LocalProtocolError or RemoteProtocolError")
        super().__init__(message)
        self.reply = reply
        self.temporary = temporary


class LocalProtocolError(ProtocolError[R]):
    """The driver used the machine wrongly; nothing changed."""


class RemoteProtocolError(ProtocolError[R]):
    """The peer broke the protocol, or (client role) cannot serve the session. Server role:
    ``reply`` answers it. Client role: ``reply`` is None and ``temporary`` says what to do:
    True, close and try again later; False, this server cannot be used as it is (it offers
    no TLS or no usable login, or refused the session for good), so retrying will not help.
    The message is a predicate about the server ("refused STARTTLS: ..."), safe to log and
    to show (never a password)."""
