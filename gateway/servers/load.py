"""How many sessions each protocol worker serves, shared by the workers of one supervisor.

Theory of operation
-------------------
Workers accept on the same listening sockets (SPEC.md 16.1). A new connection wakes every
worker waiting on the socket and the first to call accept takes it, so a burst of connections
can all land on one worker while another idles. The supervisor makes one small shared memory
file (``memfd``) with a slot per worker, a 32-bit count of the sessions it serves; each worker
writes its own slot whenever the count changes and reads the others' before it accepts. A
worker that serves more sessions than some other one waits :data:`DEFER` seconds once a
connection is waiting and looks again, so the less loaded worker, woken by the same connection,
takes it; after :data:`DEFER_MAX` seconds of that it accepts anyway (a stuck or slow peer
never leaves a connection waiting long). A slot reads
:data:`GONE` while its worker is not running, so a dead worker is never waited for.
"""

from __future__ import annotations

import mmap
import os
import struct

__all__ = ["DEFER", "DEFER_MAX", "GONE", "LOAD_FD", "WorkerLoads"]

LOAD_FD = "GATEWAY_LOAD_FD"  # "descriptor,slot,slots"; slot -1 for the journal (it reads)
DEFER = 0.001  # seconds a busier worker leaves a waiting connection to the others, at a time
DEFER_MAX = 0.01  # and in all, before it takes the next connection whatever the others do
GONE = 0xFFFFFFFF  # the slot of a worker that is not running
_SLOT = struct.Struct("=I")


class WorkerLoads:
    """The shared counts, seen from one process (the supervisor: ``slot`` None)."""

    def __init__(self, fd: int, slots: int, slot: int | None = None) -> None:
        self.fd = fd
        self.slots = slots
        self.slot = slot
        self._map = mmap.mmap(fd, slots * _SLOT.size)

    @classmethod
    def create(cls, slots: int) -> WorkerLoads:
        """The supervisor's: every slot GONE until its worker starts."""
        fd = os.memfd_create("gateway-worker-loads", os.MFD_CLOEXEC)
        os.ftruncate(fd, slots * _SLOT.size)
        loads = cls(fd, slots)
        for slot in range(slots):
            loads.set(slot, GONE)
        return loads

    @classmethod
    def inherited(cls, spec: str) -> WorkerLoads:
        """A worker's, from the LOAD_FD variable the supervisor set."""
        fd, slot, slots = (int(part) for part in spec.split(","))
        if not -1 <= slot < slots:
            raise ValueError(f"{LOAD_FD}: slot {slot} of {slots}")
        return cls(fd, slots, None if slot == -1 else slot)

    def spec(self, slot: int | None) -> str:
        """LOAD_FD for the worker of ``slot``, or (None) for the journal, which only reads."""
        return f"{self.fd},{-1 if slot is None else slot},{self.slots}"

    def sessions(self) -> list[int | None]:
        """Each worker's sessions now, by slot (None: not running)."""
        counts = [_SLOT.unpack_from(self._map, s * _SLOT.size)[0] for s in range(self.slots)]
        return [None if count == GONE else count for count in counts]

    def set(self, slot: int, value: int) -> None:
        _SLOT.pack_into(self._map, slot * _SLOT.size, value)

    def publish(self, sessions: int) -> None:
        """This worker now serves ``sessions`` sessions."""
        assert self.slot is not None
        self.set(self.slot, min(sessions, GONE - 1))

    def busier(self, sessions: int) -> bool:
        """Whether another running worker serves fewer sessions than ``sessions``."""
        return any(
            _SLOT.unpack_from(self._map, slot * _SLOT.size)[0] < sessions
            for slot in range(self.slots)
            if slot != self.slot
        )

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
