"""The SMTP machine's errors: the shared ones of ``protocols/_errors.py`` (h11's split into
Local and Remote; read that module for what each means), with an SMTP :class:`Reply` as the
reply that answers a remote error. They are the SMTP machine's own classes, so
``except smtp.RemoteProtocolError`` never catches a POP3 error."""

from __future__ import annotations

from .. import _errors
from ._events import Reply

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(_errors.ProtocolError[Reply]):
    """Base of the SMTP machine's errors; never raised itself."""


class LocalProtocolError(ProtocolError, _errors.LocalProtocolError[Reply]):
    """The driver used an SMTP machine wrongly; nothing changed."""


class RemoteProtocolError(ProtocolError, _errors.RemoteProtocolError[Reply]):
    """The SMTP peer broke the protocol; ``reply`` answers it (server role) or is None and
    ``temporary`` says whether to try again (client role)."""
