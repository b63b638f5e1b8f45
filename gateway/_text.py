"""Text that cannot lie on a terminal: what mailbox names and descriptions may hold (SPEC.md
10), and how the command line shows text that holds more (old data, another server).

Refused, because each can make a line say something other than what it holds: C0 and C1
controls and DEL (Unicode category Cc: a newline forges a table row, an ESC sequence recolours
or clears the screen), line and paragraph separators (Zl, Zp), lone surrogates (Cs, not even
encodable), and the bidirectional formatting controls (the "Trojan Source" characters,
CVE-2021-42574: U+202E shows ``lanigiro`` for ``original``).
"""

from __future__ import annotations

import unicodedata

__all__ = ["BIDI_CONTROLS", "escape_unsafe", "first_unsafe"]

# LRE RLE PDF LRO RLO, LRI RLI FSI PDI, LRM RLM, ALM (Unicode UAX #9).
BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
)
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def _unsafe(char: str) -> bool:
    return char in BIDI_CONTROLS or unicodedata.category(char) in _UNSAFE_CATEGORIES


def first_unsafe(text: str, allowed: str = "") -> str | None:
    """The first character of ``text`` that may not be stored (besides ``allowed``)."""
    for char in text:
        if char not in allowed and _unsafe(char):
            return char
    return None


def escape_unsafe(text: str) -> str:
    """``text`` with every unsafe character (tab and newline too) as a Python escape, so
    one value stays one cell of one line."""
    if first_unsafe(text) is None:
        return text
    return "".join(_escape(char) if _unsafe(char) else char for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"
