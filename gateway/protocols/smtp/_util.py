"""Errors, split as h11's ``_util.py`` splits them.

A :class:`LocalProtocolError` means the driver broke the machine's contract (``send()`` with
nothing to answer, a reply code that cannot answer the pending command); the machine's state
is left as it was, so the error is a bug report, not a session failure.

A :class:`RemoteProtocolError` means the peer sent something the protocol does not allow. It
carries the reply that answers it (h11's ``error_status_hint``, for us an SMTP reply). The
server machine catches these itself and turns them into queued replies or a
``ConnectionClosed`` event, so its driver never sees one; the client machine
(``_client.py``) and its reply reader raise them with ``reply=None`` (a client has nobody to
reply to) and ``temporary``, which says whether a later try may help.
"""

from __future__ import annotations

from ._events import Reply

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    def __init__(self, message: str, reply: Reply | None = None, *, temporary: bool = True) -> None:
        if type(self) is ProtocolError:
            raise TypeError("instantiate LocalProtocolError or RemoteProtocolError")
        super().__init__(message)
        self.reply = reply
        self.temporary = temporary


class LocalProtocolError(ProtocolError):
    """The driver used the machine wrongly; nothing changed."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol, or (client role) cannot serve the session. Server role:
    ``reply`` answers it. Client role: ``reply`` is None and ``temporary`` says what to do:
    True, close and try again later; False, this server cannot be used as it is (it offers
    no TLS or no usable login, or refused the session for good), so retrying will not help.
    The message is a predicate about the server ("refused STARTTLS: ..."), safe to log and
    to show (never a password)."""
