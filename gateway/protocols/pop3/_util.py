"""Errors, split as h11's ``_util.py`` splits them (and as the SMTP machine does).

:class:`LocalProtocolError`: the driver broke the machine's contract (``send()`` with nothing
to answer, a single-line +OK to RETR); nothing changed. :class:`RemoteProtocolError`: the
peer broke the protocol; ``reply`` is the ``-ERR`` that answers it. The server machine catches
these itself (its driver never sees one); the client-role reply reader raises them with
``reply=None``.
"""

from __future__ import annotations

from ._events import Reply

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    def __init__(self, message: str, reply: Reply | None = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("instantiate LocalProtocolError or RemoteProtocolError")
        super().__init__(message)
        self.reply = reply


class LocalProtocolError(ProtocolError):
    """The driver used the machine wrongly; nothing changed."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; ``reply`` answers it."""
