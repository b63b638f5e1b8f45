"""The POP3 machine's errors: the shared ones of ``protocols/_errors.py`` (h11's split into
Local and Remote; read that module for what each means), with a POP3 :class:`Reply` (an
``-ERR``) as the reply that answers a remote error. They are the POP3 machine's own classes,
so ``except pop3.RemoteProtocolError`` never catches an SMTP error."""

from __future__ import annotations

from .. import _errors
from ._events import Reply

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(_errors.ProtocolError[Reply]):
    """Base of the POP3 machine's errors; never raised itself."""


class LocalProtocolError(ProtocolError, _errors.LocalProtocolError[Reply]):
    """The driver used a POP3 machine wrongly (a single-line +OK to RETR...); nothing
    changed."""


class RemoteProtocolError(ProtocolError, _errors.RemoteProtocolError[Reply]):
    """The POP3 peer broke the protocol; ``reply`` is the ``-ERR`` that answers it (server
    role) or None and ``temporary`` says whether to try again (client role)."""
