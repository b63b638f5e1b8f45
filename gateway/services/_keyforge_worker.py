"""The key forge's child process: makes prepared message keys on another core.

Sealing a message's data key to the mailbox key (HPKE with ML-KEM-768 + X25519) is the one
costly step of taking in a message, and it holds the GIL, so threads cannot spread it. This
process does it instead, ahead of time. It never touches the data folder; it reads requests
on standard input and writes replies on standard output, each a frame of a u32 little-endian
length and a MessagePack body:

    request  [public key (1216 bytes), mailbox id (16 bytes), count]
    reply    [[message id, data key, wrapped key], ...]   (count entries)

Run by :class:`gateway.services.keyforge.KeyForge` as ``python -m
gateway.services._keyforge_worker``; it exits when its standard input closes, and quietly
(code 0, nothing on standard error) when its reply cannot be written because the gateway is
gone: killed, or ended without waiting for it.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from typing import BinaryIO

import msgspec

from ..crypto import MailboxPublicKey, prepare_keys

MAX_COUNT = 1024
_LENGTH = struct.Struct("<I")
_MAX_FRAME = 64 * 1024


class _Request(msgspec.Struct, array_like=True):
    public_key: bytes
    mailbox_id: bytes
    count: int


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            return None
        data += more
    return data


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    decoder = msgspec.msgpack.Decoder(_Request)
    encoder = msgspec.msgpack.Encoder()
    keys: dict[bytes, MailboxPublicKey] = {}
    while True:
        head = _read_exact(stdin, _LENGTH.size)
        if head is None:
            return
        (length,) = _LENGTH.unpack(head)
        if length > _MAX_FRAME:
            raise SystemExit("key forge: request too long")
        body = _read_exact(stdin, length)
        if body is None:
            return
        request = decoder.decode(body)
        if not 0 < request.count <= MAX_COUNT:
            raise SystemExit("key forge: bad count")
        public_key = keys.get(request.public_key)
        if public_key is None:
            if len(keys) > 4096:
                keys.clear()
            public_key = keys[request.public_key] = MailboxPublicKey(request.public_key)
        prepared = prepare_keys(public_key, request.mailbox_id, request.count)
        reply = encoder.encode([[p.message_id, p.data_key, p.wrapped_key] for p in prepared])
        stdout.write(_LENGTH.pack(len(reply)) + reply)
        stdout.flush()


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the gateway decides when this
    # process ends (it closes the pipe, or kills it on shutdown).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        # Nobody reads the replies any more: the gateway is gone, and there is nobody to
        # tell. Standard output goes nowhere from now on, or the interpreter's own flush of
        # it at exit would fail again, and say so on standard error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    main()
