"""Mailbox passwords: generated once, shown once, never stored.

Theory of operation
-------------------
The password is the only way to the mailbox private key, so it is generated rather than
chosen: 30 symbols drawn with :mod:`secrets` from a 32-symbol alphabet (5 bits each, 150
bits in all), in six groups of five joined by ``-`` so a person can read it out and type it
back. The alphabet is lowercase letters and digits without the look-alikes ``0 o 1 l`` (and
there is no uppercase, so no ``O`` or ``I``): what is written down is what is typed.
"""

from __future__ import annotations

import secrets

__all__ = ["generate_password"]

_SYMBOLS = "23456789abcdefghijkmnpqrstuvwxyz"
_GROUPS = 6
_GROUP_SIZE = 5

assert len(_SYMBOLS) == len(set(_SYMBOLS)) == 32  # 5 bits per symbol


def generate_password() -> str:
    """A fresh random password such as ``k7m2q-9xw4t-...``: 150 bits of entropy."""
    return "-".join(
        "".join(secrets.choice(_SYMBOLS) for _ in range(_GROUP_SIZE)) for _ in range(_GROUPS)
    )
