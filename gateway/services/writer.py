"""Sealing one message on its way in: the half of intake that runs where the session runs.

Theory of operation
-------------------
A :class:`MessageWriter` seals a message as it arrives, once per mailbox (the public key is
all it needs), and hands the ciphertext to an :class:`IntakeSink`: the journal's half, which
frames, appends, commits and witnesses it (``services.intake.PendingMessage``). In one
process the sink is that object itself; a protocol worker reaches it over the journal
protocol (``gateway.store``). Nothing but sealed bytes and sizes ever reaches the sink, and
the sink builds every record itself: the sealing side cannot name records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

import msgspec
import trio

from ..crypto import MailboxPublicKey, MessageSealer, PreparedKey
from ..events import Envelope, MessageAccepted, encode_envelope
from ..ids import new_message_id
from ._common import MAX_ENVELOPE_BYTES, ArchiveError, MessageTooLarge

__all__ = ["THREAD_THRESHOLD", "IntakeSink", "MessageWriter", "SealTarget", "SealedCopy"]

T = TypeVar("T")

# Sealing a piece this large or larger goes to a worker thread; smaller pieces are cheaper to
# seal on the loop than to hand over.
THREAD_THRESHOLD = 64 * 1024


class SealedCopy(msgspec.Struct, frozen=True, array_like=True):
    """One mailbox's copy, sealed: what its commit record needs besides its chunks.
    ``last_chunk`` is None when the final chunk was already written (prepared). The journal
    protocol carries it as it is (SPEC.md 16.2)."""

    mailbox_id: str
    message_id: str
    size: int
    sealed_size: int
    key_id: str
    wrapped_key: bytes
    envelope: bytes
    last_chunk: bytes | None


class IntakeSink(Protocol):
    """The journal's half of one message (SPEC.md 6.2)."""

    async def append_chunks(self, mailbox_id: str, chunks: list[bytes]) -> None:
        """Append sealed chunks of the message to one mailbox (written, not yet durable)."""

    async def commit(
        self, copies: Sequence[SealedCopy], accepted: MessageAccepted | None = None
    ) -> None:
        """Commit every copy and witness them: durable and visible in all, or an error and
        in none. ``accepted``, the audit record of the acceptance, goes in with the witness."""

    async def abort(self) -> None:
        """Give the message up; chunks written become orphans for compaction."""


@dataclass(slots=True)
class SealTarget:
    """One mailbox the message goes to, as the sealing side knows it."""

    mailbox_id: str
    public_key: MailboxPublicKey
    message_id: str = ""
    prepared: PreparedKey | None = None  # a data key sealed ahead of time (SPEC.md 5.4)


class MessageWriter:
    """One message on its way into one or more mailboxes. Feed it with :meth:`write`, then
    :meth:`commit` (durable in every mailbox, or an exception and visible in none).

    :meth:`prepare` (optional, before commit) writes everything but the commit record, so
    that what can still fail afterwards is one small record: the SMTP proxy prepares before
    the target may accept the message, and commits after."""

    def __init__(
        self,
        targets: Sequence[SealTarget],
        sink: IntakeSink,
        *,
        max_bytes: int,
        source_key: str = "",
    ) -> None:
        self._sink = sink
        self._max_bytes = max_bytes
        self.source_key = source_key
        self.size = 0
        self._done = False
        self._prepared = False
        self._sealers: dict[str, MessageSealer] = {}
        self.message_ids: dict[str, str] = {}
        for target in targets:
            prepared = target.prepared
            message_id = prepared.message_id.hex() if prepared else target.message_id
            message_id = message_id or new_message_id()
            self.message_ids[target.mailbox_id] = message_id
            self._sealers[target.mailbox_id] = MessageSealer(
                target.public_key,
                bytes.fromhex(target.mailbox_id),
                bytes.fromhex(message_id),
                prepared=prepared,
            )

    @property
    def mailbox_ids(self) -> list[str]:
        return list(self._sealers)

    async def write(self, data: bytes, *, allowance: int = 0) -> None:
        """``allowance``: octets written that the limit does not count (the trace field the
        SMTP server prepends): the limit applies to what the client sent (SPEC.md 12.2)."""
        self._check_open()
        self.size += len(data)
        if self.size > self._max_bytes + allowance:
            await self.abort()
            raise MessageTooLarge(f"message exceeds the maximum of {self._max_bytes} octets")
        try:
            for mailbox_id, sealer in self._sealers.items():
                if len(data) >= THREAD_THRESHOLD:
                    chunks = await trio.to_thread.run_sync(sealer.feed, data)
                else:
                    chunks = sealer.feed(data)
                if chunks:
                    await self._sink.append_chunks(mailbox_id, chunks)
        except BaseException:
            await self._give_up()
            raise

    async def prepare(self) -> None:
        """Seal and write the final chunk in every mailbox (not yet durable, not yet
        visible). Raises LogWriteError (then the message can only be aborted)."""
        self._check_open()
        if self._prepared:
            return
        try:
            for mailbox_id, sealer in self._sealers.items():
                last = await self._in_thread_if_large(sealer.finish_content)
                await self._sink.append_chunks(mailbox_id, [last])
        except BaseException:
            await self._give_up()
            raise
        self._prepared = True

    async def commit(
        self, envelope: Envelope, *, accepted: MessageAccepted | None = None
    ) -> dict[str, str]:
        """Make the message durable in every mailbox; returns mailbox id -> message id.
        Raises LogWriteError or ArchiveError: then it is stored nowhere. ``accepted`` (naming
        :attr:`message_ids`) is written with the message's witness, in the same round."""
        self._check_open()
        meta = encode_envelope(envelope)
        if len(meta) > MAX_ENVELOPE_BYTES:
            await self.abort()
            raise ArchiveError(f"envelope metadata exceeds {MAX_ENVELOPE_BYTES} octets")
        self._done = True
        copies = []
        for mailbox_id, sealer in self._sealers.items():
            if self._prepared:
                last, sealed = None, sealer.seal_envelope(meta)
            else:
                last, sealed = await self._in_thread_if_large(partial(sealer.finish, meta))
            copies.append(
                SealedCopy(
                    mailbox_id=mailbox_id,
                    message_id=self.message_ids[mailbox_id],
                    size=sealed.size,
                    sealed_size=sealed.sealed_size,
                    key_id=sealed.key_id.hex(),
                    wrapped_key=sealed.wrapped_key,
                    envelope=sealed.envelope,
                    last_chunk=last,
                )
            )
        await self._sink.commit(copies, accepted)
        return dict(self.message_ids)

    async def abort(self) -> None:
        """Give the message up; its chunks already written become orphans for compaction."""
        if not self._done:
            self._done = True
            await self._sink.abort()

    async def _give_up(self) -> None:
        with trio.CancelScope(shield=True):
            await self.abort()

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError("message already committed or aborted")

    async def _in_thread_if_large(self, work: Callable[[], T]) -> T:
        if self.size >= THREAD_THRESHOLD:
            return await trio.to_thread.run_sync(work)
        return work()
