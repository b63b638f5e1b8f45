"""A POP3 maildrop as fixed at login, held in 24 bytes a message (SPEC.md 14)."""

from __future__ import annotations

from array import array

__all__ = ["Maildrop"]

_ID = 16


class Maildrop:
    """Message ids and sizes, numbered from 1 in the order the journal listed them; what
    STAT, LIST and UIDL answer from. Where a message's records are is asked for when it is
    read, so a million-message maildrop costs a worker 24 MB, not a listing of objects."""

    def __init__(self) -> None:
        self._ids = bytearray()
        self._sizes = array("q")
        self.total_bytes = 0

    def extend(self, ids: bytes, sizes: list[int]) -> None:
        if len(ids) != _ID * len(sizes):
            raise ValueError("a maildrop page whose ids and sizes do not pair up")
        self._ids += ids
        self._sizes.extend(sizes)
        self.total_bytes += sum(sizes)

    def __len__(self) -> int:
        return len(self._sizes)

    def message_id(self, number: int) -> str:
        at = (number - 1) * _ID
        return self._ids[at : at + _ID].hex()

    def size(self, number: int) -> int:
        return self._sizes[number - 1]
