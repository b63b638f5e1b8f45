"""The key forge: message data keys made ahead, on the other core.

Theory of operation
-------------------
Every message gets a fresh data key sealed to its mailbox's public key with HPKE (ML-KEM-768 +
X25519): about 70 µs of CPU that holds the GIL, which alone would cap intake near 5,000
messages/s on the event loop. The forge moves that work to a child process
(``_keyforge_worker``) that keeps a small pool of :class:`~gateway.crypto.PreparedKey` per
mailbox key filled, so intake takes a ready key in O(1).

:meth:`KeyForge.take` never waits: when the pool is empty (a burst, a new mailbox, the child
restarting) it returns None and the sealer does the HPKE step itself. The forge only changes
where the work is done, never what is written: a prepared key is exactly what
``MessageSealer`` would have made (a fresh random message id, a fresh random data key, HPKE
info binding mailbox id and message id).

Prepared keys are secrets: they exist only in the memory of the gateway and its child and
cross the pipe between them, never a file or a log. At most :attr:`KeyForge.capacity` of them
exist at once: when a mailbox needs a batch and there is no room, the pools of the mailboxes
that took a key least recently are dropped (a gateway for thousands of mailboxes keeps the
busy ones filled). A pool for a key that is no longer the mailbox's (after a reset) is
dropped when the new key is first used.
"""

from __future__ import annotations

import logging
import math
import struct
import subprocess
import sys
from collections import deque
from functools import partial

import msgspec
import trio

from ..crypto import MailboxPublicKey, PreparedKey

__all__ = ["KeyForge"]

logger = logging.getLogger("gateway.keyforge")

_LENGTH = struct.Struct("<I")
_MAX_REPLY = 4 * 1024 * 1024
_RESTART_DELAY = 1.0

_PoolKey = tuple[bytes, bytes]  # mailbox id, key id


class _ForgeBroken(Exception):
    pass


_RESTARTABLE = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, _ForgeBroken)


class KeyForge:
    def __init__(self, *, batch: int = 64, capacity: int = 4096) -> None:
        self.batch = batch
        self.capacity = capacity
        self._pools: dict[_PoolKey, deque[PreparedKey]] = {}
        self._public: dict[_PoolKey, MailboxPublicKey] = {}
        self._wanted: set[_PoolKey] = set()
        self._send, self._receive = trio.open_memory_channel[_PoolKey](math.inf)
        self._running = False
        self._pooled = 0
        self.pid: int | None = None  # of the child process, while it runs
        self.served = 0
        self.missed = 0
        self.restarts = 0

    # -- intake side (sync, never blocks)

    def take(self, public_key: MailboxPublicKey, mailbox_id: bytes) -> PreparedKey | None:
        """A prepared key for a new message of this mailbox, or None (then seal inline)."""
        pool_key = (mailbox_id, public_key.key_id)
        pool = self._pools.pop(pool_key, None)
        if pool is None:
            self._drop_other_keys(mailbox_id, public_key.key_id)
            pool = deque()
            self._public[pool_key] = public_key
        self._pools[pool_key] = pool  # the most recently used last
        if (
            len(pool) < 2 * self.batch  # ask early: a batch takes milliseconds to make
            and pool_key not in self._wanted
            and self._running
            and self._make_room(pool_key)
        ):
            self._wanted.add(pool_key)
            self._send.send_nowait(pool_key)
        if not pool:
            self.missed += 1
            return None
        self.served += 1
        self._pooled -= 1
        return pool.popleft()

    def _make_room(self, wanted: _PoolKey) -> bool:
        """Room for another batch within ``capacity``, made by dropping the pools of the
        mailboxes that took a key least recently (their keys are only random material).
        False when even that cannot make room."""
        for idle in list(self._pools):
            if self._pooled + self.batch <= self.capacity:
                break
            if idle == wanted or idle in self._wanted:
                continue
            self._pooled -= len(self._pools.pop(idle))
            self._public.pop(idle, None)
        return self._pooled + self.batch <= self.capacity

    def _drop_other_keys(self, mailbox_id: bytes, key_id: bytes) -> None:
        for stale in [k for k in self._pools if k[0] == mailbox_id and k[1] != key_id]:
            self._pooled -= len(self._pools.pop(stale))
            self._public.pop(stale, None)

    def statistics(self) -> dict[str, int]:
        return {
            "served": self.served,
            "missed": self.missed,
            "pooled": self._pooled,
            "restarts": self.restarts,
        }

    # -- the child process

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the child running and the pools filled, until cancelled."""
        started = False
        while True:
            try:
                async with trio.open_nursery() as nursery:
                    process: trio.Process = await nursery.start(
                        partial(
                            trio.run_process,
                            [sys.executable, "-m", "gateway.services._keyforge_worker"],
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            check=False,
                        )
                    )
                    self.pid = process.pid
                    self._running = True
                    if not started:
                        started = True
                        task_status.started()
                    try:
                        await self._serve(process)
                    finally:
                        nursery.cancel_scope.cancel()
            except* _RESTARTABLE as group:
                reasons = "; ".join(str(exc) for exc in group.exceptions)
                logger.warning("event=keyforge-restart reason=%r", reasons)
            finally:
                self._running = False
                self._wanted.clear()
            self.restarts += 1
            if not started:
                started = True
                task_status.started()
            await trio.sleep(_RESTART_DELAY)

    async def _serve(self, process: trio.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        encoder = msgspec.msgpack.Encoder()
        decoder = msgspec.msgpack.Decoder(list[tuple[bytes, bytes, bytes]])
        buffer = bytearray()
        while True:
            pool_key = await self._receive.receive()
            public_key = self._public.get(pool_key)
            if public_key is None:  # dropped meanwhile (key reset)
                self._wanted.discard(pool_key)
                continue
            request = encoder.encode([public_key.public_bytes, pool_key[0], self.batch])
            await process.stdin.send_all(_LENGTH.pack(len(request)) + request)
            reply = await _read_frame(process.stdout, buffer)
            try:
                entries = decoder.decode(reply)
            except msgspec.DecodeError as exc:
                raise _ForgeBroken(f"undecodable reply: {exc}") from None
            self._wanted.discard(pool_key)
            pool = self._pools.get(pool_key)
            if pool is None:
                continue
            for message_id, data_key, wrapped_key in entries:
                pool.append(
                    PreparedKey(pool_key[1], pool_key[0], message_id, data_key, wrapped_key)
                )
            self._pooled += len(entries)


async def _read_frame(stream: trio.abc.ReceiveStream, buffer: bytearray) -> bytes:
    while True:
        if len(buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer)
            if length > _MAX_REPLY:
                raise _ForgeBroken("reply too long")
            if len(buffer) >= _LENGTH.size + length:
                frame = bytes(buffer[_LENGTH.size : _LENGTH.size + length])
                del buffer[: _LENGTH.size + length]
                return frame
        more = await stream.receive_some(1 << 16)
        if not more:
            raise _ForgeBroken("the key forge process exited")
        buffer += more
