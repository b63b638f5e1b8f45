"""Protocol machines: bytes in, events out, bytes back (sans-IO, in the manner of h11).

Nothing under this package performs I/O, imports trio or keeps a clock: a driver in
``gateway.servers`` owns the socket and the timeouts, feeds received bytes to a machine, acts on
the events it returns and writes the bytes it hands back. That keeps every protocol rule
testable without a socket and every parser fuzzable.

``smtp`` and ``pop3`` each hold one protocol's rules; what both share is written once here:
``_machine`` (the scaffolding of the server and client machines: buffers, ``next_event()``'s
order, the lock-step client's checks, the cleartext-after-upgrade refusal), ``_lines`` (the
bounded line splitter), ``_errors`` (Local and Remote protocol errors), ``_dotstuff``
(dot-stuffing) and ``_sasl`` (PLAIN and LOGIN).
"""

from __future__ import annotations

from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError

# The errors of every machine (each protocol's are subclasses): a driver of both catches these.
__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]
