"""Errors, split as h11's ``_util.py`` splits them (and as the SMTP machine does).

:class:`LocalProtocolError`: the driver broke the machine's contract (``send()`` with nothing
to answer, a single-line +OK to RETR); nothing changed. :class:`RemoteProtocolError`: the
peer broke the protocol; ``reply`` is the ``-ERR`` that answers it. The server machine catches
these itself (its driver never sees one); the client machine (``_client.py``) and its reply
reader raise them with ``reply=None`` and ``temporary`` saying whether a later try may help.
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
