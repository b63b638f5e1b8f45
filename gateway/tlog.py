"""Signed checkpoints of a log's Merkle tree: the C2SP tlog-checkpoint body inside a C2SP
signed note, signed with Ed25519 (c2sp.org/tlog-checkpoint, c2sp.org/signed-note).

Theory of operation
-------------------
A checkpoint's body is three lines, each ending in a newline: the log's origin (a name
unique to that log), the tree size in decimal and the root hash in standard base64; then
optional extension lines. A signed note is that body, a blank line, and one line per
signature: an em dash (U+2014), a space, the key name, a space, and base64 of the 4-byte
key id followed by the 64-byte Ed25519 signature of the body. The key id is the first four
bytes of SHA-256(key name || 0x0A || 0x01 || public key); a verifier key ("vkey") is
``<name>+<hex key id>+<base64(0x01 || public key)>``. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["Checkpoint", "NoteError", "NoteSigner", "Verifier", "open_note"]

_ED25519 = b"\x01"
_DASH = "\u2014 "
MAX_NOTE = 1 << 16
MAX_SIGNATURES = 100


class NoteError(ValueError):
    """A note that does not parse, or that no trusted key signed."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> bytes:
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines).encode()

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            raise NoteError("a checkpoint is UTF-8 text") from None
        if not text.endswith("\n"):
            raise NoteError("a checkpoint body ends in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or not lines[0] or any(not line for line in lines):
            raise NoteError("a checkpoint has an origin, a size and a root hash, one a line")
        origin, size, root = lines[:3]
        if not size.isdigit() or (size.startswith("0") and size != "0"):
            raise NoteError(f"checkpoint size {size!r} is not a decimal number")
        try:
            digest = base64.b64decode(root, validate=True)
        except binascii.Error:
            raise NoteError("the checkpoint's root hash is not base64") from None
        if len(digest) != 32:
            raise NoteError("the checkpoint's root hash is not 32 bytes")
        return cls(origin, int(size), digest, tuple(lines[3:]))


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


def _check_name(name: str) -> None:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"key name {name!r}: non-empty, no spaces, no '+'")


class NoteSigner:
    """Signs notes with one Ed25519 key under one name."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._key = key
        self.public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = _key_id(name, self.public)

    def vkey(self) -> str:
        """The verifier key an auditor is given."""
        encoded = base64.b64encode(_ED25519 + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def sign(self, body: bytes) -> bytes:
        """The signed note of ``body`` (a checkpoint's)."""
        if not body.endswith(b"\n") or b"\n\n" in body:
            raise NoteError("a note's text ends in a newline and has no blank line")
        signature = base64.b64encode(self.key_id + self._key.sign(body)).decode()
        return body + b"\n" + f"{_DASH}{self.name} {signature}\n".encode()


@dataclass(frozen=True, slots=True)
class Verifier:
    name: str
    key_id: bytes
    public: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        parts = vkey.strip().split("+", 2)  # base64 may hold "+"
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<key id>+<key>")
        name, hex_id, encoded = parts
        _check_name(name)
        try:
            key = base64.b64decode(encoded, validate=True)
            key_id = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise NoteError("a verifier key's id is hex and its key base64") from None
        if len(key) != 33 or key[:1] != _ED25519 or len(key_id) != 4:
            raise NoteError("not an Ed25519 verifier key")
        if _key_id(name, key[1:]) != key_id:
            raise NoteError("the verifier key's id is not its key's")
        return cls(name, key_id, Ed25519PublicKey.from_public_bytes(key[1:]))


def open_note(note: bytes, verifier: Verifier) -> bytes:
    """The note's text, if ``verifier``'s key signed it; NoteError otherwise. Signatures by
    other keys are ignored (a note may carry a witness's too)."""
    if len(note) > MAX_NOTE:
        raise NoteError("the note is too large")
    split = note.rfind(b"\n\n")
    if split < 0 or not note.endswith(b"\n"):
        raise NoteError("a note is text, a blank line, then signature lines")
    body, lines = note[: split + 1], note[split + 2 : -1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("too many signatures")
    for raw in lines:
        try:
            line = raw.decode()
        except UnicodeDecodeError:
            raise NoteError("a signature line is UTF-8") from None
        if not line.startswith(_DASH) or line.count(" ") != 2:
            raise NoteError(f"not a signature line: {line!r}")
        name, encoded = line[len(_DASH) :].split(" ")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise NoteError("a signature is base64") from None
        if len(blob) < 5:
            raise NoteError("a signature is a key id and the signature")
        if name != verifier.name or blob[:4] != verifier.key_id:
            continue
        try:
            verifier.public.verify(blob[4:], body)
        except InvalidSignature:
            raise NoteError(f"the signature by {name} does not verify") from None
        return body
    raise NoteError(f"no signature by {verifier.name}")
