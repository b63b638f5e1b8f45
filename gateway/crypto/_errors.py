"""The exceptions of :mod:`gateway.crypto`.

Theory of operation
-------------------
Every failure that data (a key file, a password, a sealed message) can cause is a
:class:`CryptoError`; its message is safe to show to an operator and never contains key
material. Anything else that escapes this package (``ValueError`` for malformed arguments,
``RuntimeError`` for misuse of a sealer) is a bug in the caller.

The three kinds are kept apart on purpose: a wrong password is an everyday event (a user
mistyped), a corrupt key file or message is an incident (disk damage or tampering) and
must never be reported to the user as "wrong password", or they would keep guessing.
"""

from __future__ import annotations

__all__ = ["CryptoError", "KeyFileCorrupt", "MessageCorrupt", "WrongPassword"]


class CryptoError(Exception):
    """Base class: the data, not the code, is at fault."""


class WrongPassword(CryptoError):
    """The password does not open this key file (the AES-GCM tag did not verify)."""


class KeyFileCorrupt(CryptoError):
    """The key file is damaged, truncated, of an unknown version, or belongs elsewhere."""


class MessageCorrupt(CryptoError):
    """A sealed message failed to open: tampered, truncated, reordered, or misfiled."""
