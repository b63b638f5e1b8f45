"""The POP3 proxy's source keys: which upstream messages a mailbox already holds a copy of,
told without a record that lets a reader of the data folder confirm a guess (SPEC.md 5.5,
15.3).

Theory of operation
-------------------
Every copy the recording POP3 proxy stores carries a ``source_key`` in its commit record
(``MessageStored.source_key``, in the clear), so that retrieving the same upstream message
again does not store it again. An unkeyed digest of (target, remote user, UIDL) would let
anyone holding a copy of the data folder confirm a guessed triple ("did alice at
mail.example.org have the message with this UIDL?") and link the copies of one upstream message
across mailboxes. So the key is HMAC-SHA256 under a 32-byte gateway secret, over the mailbox id
as well as the triple, and the secret lives outside the data folder
(``[proxy] source_key_secret_file``): a copy of the data folder alone (a backup, a stolen disk
image of the data volume) confirms nothing and links nothing.

The secret is made on the first start (32 bytes from the OS's CSPRNG, mode 0600, its folder
0700, written under a temporary name, fsynced and linked into place so that a crash never
leaves half a secret and two starts never replace each other's) and read on every start; it is
logged by path, never by content. Losing it loses nothing but deduplication: copies stored
under the old secret are no longer recognised, so the next RETR of each such upstream message
stores one more copy.

Copies stored before the secret existed carry the unkeyed key
(``legacy_source_key``: hex SHA-256 of target NUL remote user NUL UIDL). The proxy checks
both keys, so those copies are not stored again; their records are never rewritten (the log
is append-only), and the unkeyed keys they carry stay confirmable until compaction removes
expunged ones.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SECRET_BYTES",
    "SourceKeyError",
    "SourceKeys",
    "legacy_source_key",
    "load_source_keys",
]

logger = logging.getLogger("gateway")

SECRET_BYTES = 32
_DOMAIN = b"mag/source-key/v1"


class SourceKeyError(Exception):
    """The secret cannot be read or made; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class SourceKeys:
    secret: bytes = field(repr=False)

    def key(self, mailbox_id: str, target: str, remote_user: str, uidl: str) -> str:
        """Hex HMAC-SHA256(secret, domain NUL mailbox id NUL target NUL remote user NUL UIDL).
        None of the parts holds a NUL (routing refuses control characters in the user name
        and target; a UIDL is 0x21-0x7E)."""
        parts = (_DOMAIN, mailbox_id.encode(), target.encode(), remote_user.encode(), uidl.encode())
        return hmac.new(self.secret, b"\0".join(parts), hashlib.sha256).hexdigest()


def legacy_source_key(target: str, remote_user: str, uidl: str) -> str:
    """The unkeyed key of copies stored before the secret existed; only ever looked up."""
    return hashlib.sha256(f"{target}\0{remote_user}\0{uidl}".encode()).hexdigest()


def load_source_keys(path: Path) -> SourceKeys:
    """Read the secret at ``path``, making it first if there is no such file. Raises
    SourceKeyError."""
    created = False
    try:
        try:
            secret = path.read_bytes()
        except FileNotFoundError:
            secret, created = _create(path), True
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise SourceKeyError(
            f"proxy.source_key_secret_file {path}: {exc.strerror or exc}; it holds "
            f"{SECRET_BYTES} random bytes and lives outside the data folder (SPEC.md 5.5): "
            "make its folder writable for the first start, or create it (mode 0600)"
        ) from None
    if len(secret) != SECRET_BYTES:
        raise SourceKeyError(
            f"proxy.source_key_secret_file {path}: {len(secret)} bytes, not {SECRET_BYTES}; "
            "restore it from a backup, or move it away to make a new one (copies stored "
            "under the old one are then stored once more when next retrieved)"
        )
    logger.info("event=source-key-secret path=%s created=%s", path, created)
    if mode & 0o077:
        logger.warning(
            "event=source-key-secret-readable path=%s mode=%s: only the gateway should read it",
            path,
            oct(mode),
        )
    return SourceKeys(secret)


def _create(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # never replaces a secret another start just made
        except FileExistsError:
            return path.read_bytes()
    finally:
        temporary.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return secret
