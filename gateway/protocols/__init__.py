"""Protocol machines: bytes in, events out, bytes back (sans-IO, in the manner of h11).

Nothing under this package performs I/O, imports trio or keeps a clock: a driver in
``gateway.servers`` owns the socket and the timeouts, feeds received bytes to a machine, acts on
the events it returns and writes the bytes it hands back. That keeps every protocol rule
testable without a socket and every parser fuzzable.
"""

from __future__ import annotations

__all__: list[str] = []
