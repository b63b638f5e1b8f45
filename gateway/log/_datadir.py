"""The data folder: its layout, the lock, mailbox folders and key files (SPEC.md section 2)::

<data>/gateway.lock               flock: one gateway per data folder
<data>/control/<seq>.seg          the control log
<data>/mailboxes/<id>/key         the mailbox key file (replaced atomically)
<data>/mailboxes/<id>/log/<seq>.seg
<data>/admin/password             the admin password's verifier (replaced two-phase)
<data>/admin/token-key            the key of the admin token digests
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ..ids import parse_mailbox_id
from ..merkle import MerkleTree
from ._files import (
    DataDirLocked,
    LogRecord,
    Recovery,
    fsync_dir,
    replace_file,
    write_all,
    write_new_file,
)
from ._recovery_point import RECOVERY_FILE, RecoveryPoint, read_recovery_point
from ._scan import RecordReader, iter_log
from ._segment_log import SegmentLog
from ._store_log import RecordSource, StoreLog
from ._tree_file import read_tree

# The control log's id (its segments' headers and chain, SPEC.md 3.1): 16 zero bytes.
CONTROL_LOG_ID = bytes(16)
Opened = tuple[StoreLog, list[LogRecord], Recovery | None]

# The files of these folders a copy of the store carries (the rest is the node's own).
_CARRIED = {
    "admin": {"password", "token-key"},
    "custody": {"signing-key", "checkpoint"},
    "control": {"base"},
}


class DataDir:
    """Paths and whole-file operations under the data folder."""

    # Whether other processes append to the same logs (a fleet store, SPEC.md 17.5); a data
    # folder's lock keeps them to one.
    shared = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_fd: int | None = None

    @property
    def control_dir(self) -> Path:
        return self.root / "control"

    @property
    def mailboxes_dir(self) -> Path:
        return self.root / "mailboxes"

    def mailbox_dir(self, mailbox_id: str) -> Path:
        # parse_mailbox_id is the gate: nothing but 32 hex characters ever becomes a path.
        return self.mailboxes_dir / parse_mailbox_id(mailbox_id)

    def mailbox_log_dir(self, mailbox_id: str) -> Path:
        return self.mailbox_dir(mailbox_id) / "log"

    def key_path(self, mailbox_id: str) -> Path:
        return self.mailbox_dir(mailbox_id) / "key"

    def ensure(self) -> None:
        for path in (self.root, self.mailboxes_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def lock(self) -> None:
        """Hold an exclusive lock on the data folder for the life of the process."""
        self.ensure()
        fd = os.open(self.root / "gateway.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirLocked(
                f"another gateway process is using the data folder {self.root}"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def size(self) -> int:
        """The bytes of every file under the data folder (blocking)."""
        total = 0
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(directory, name)).st_size
                except OSError:
                    continue
        return total

    # -- between the nodes of a shared store (none here: the folder's lock makes one node)

    def lock_maildrop(self, mailbox_id: str) -> bool:
        """Lock a POP3 maildrop against other nodes (blocking); False when one holds it."""
        return True

    def unlock_maildrop(self, mailbox_id: str) -> None:
        """Release a maildrop this node locked."""

    def holds_maildrop(self, mailbox_id: str) -> bool:
        """Whether this node still holds a maildrop it locked (blocking)."""
        return True

    def housekeeping(self) -> bool:
        """Whether this node runs the store's periodic passes (compaction, alarms, signed
        checkpoints) now: on a shared store one node does (blocking)."""
        return True

    def ended_writers(self) -> frozenset[int]:
        """The node processes of a shared store that have ended, whose chunks no commit
        names can never be committed (blocking; none here: this process knows its own)."""
        return frozenset()

    def chunks_written_by(
        self, mailbox_id: str, from_seq: int, writers: frozenset[int]
    ) -> dict[int, bytes]:
        """A mailbox log's chunks from ``from_seq`` on that these writers wrote, each with
        the message id it names (blocking)."""
        return {}

    def wait_for_others(self, timeout: float) -> dict[bytes, int]:
        """The logs nodes committed to (by log id: its next seq now), waiting up to
        ``timeout`` seconds for the first (blocking); empty when none did."""
        time.sleep(timeout)
        return {}

    def list_mailbox_ids(self) -> list[str]:
        if not self.mailboxes_dir.is_dir():
            return []
        ids = []
        for entry in os.scandir(self.mailboxes_dir):
            try:
                ids.append(parse_mailbox_id(entry.name))
            except ValueError:
                continue
        return sorted(ids)

    def create_mailbox(
        self, mailbox_id: str, key_file: bytes, log_id: bytes, *, segment_bytes: int
    ) -> StoreLog:
        """Create the mailbox folder, its key file and an empty log, all durable."""
        directory = self.mailbox_dir(mailbox_id)
        directory.mkdir(mode=0o700)
        fsync_dir(self.mailboxes_dir)
        write_new_file(directory / "key", key_file)
        return SegmentLog.create(directory / "log", log_id, segment_bytes=segment_bytes)

    # -- the logs (SPEC.md 3, 6.3, 6.7, 8.1): opened and read here, nowhere else ------------

    def _log(self, mailbox_id: str | None) -> tuple[Path, bytes]:
        if mailbox_id is None:
            return self.control_dir, CONTROL_LOG_ID
        return self.mailbox_log_dir(mailbox_id), bytes.fromhex(parse_mailbox_id(mailbox_id))

    def open_control_log(self, *, segment_bytes: int, resume: RecoveryPoint | None) -> Opened:
        """Open the control log for appending (made, empty, on the first start); see
        ``SegmentLog.open``."""
        if not self.control_dir.exists():
            log = SegmentLog.create(self.control_dir, CONTROL_LOG_ID, segment_bytes=segment_bytes)
            return log, [], None
        return SegmentLog.open(
            self.control_dir, CONTROL_LOG_ID, segment_bytes=segment_bytes, resume=resume
        )

    def open_mailbox_log(
        self,
        mailbox_id: str,
        *,
        segment_bytes: int,
        cuts: Mapping[int, int],
        acknowledged: tuple[int, bytes] | None,
        resume: RecoveryPoint | None,
    ) -> Opened:
        """Open a mailbox log for appending; see ``SegmentLog.open``."""
        directory, log_id = self._log(mailbox_id)
        return SegmentLog.open(
            directory,
            log_id,
            segment_bytes=segment_bytes,
            cuts=cuts,
            acknowledged=acknowledged,
            resume=resume,
        )

    def read_point(
        self, mailbox_id: str | None = None, name: str = RECOVERY_FILE
    ) -> RecoveryPoint | None:
        """A log's recovery point (or, for the control log, its base), None if it has none;
        raises StaleRecoveryPoint for one that does not check out."""
        directory, log_id = self._log(mailbox_id)
        return read_recovery_point(directory, log_id, name=name)

    def records(
        self, mailbox_id: str | None = None, *, from_seq: int = 0, chunk_bodies: bool = True
    ) -> Iterator[LogRecord]:
        """A log's records from ``from_seq`` (read-only, safe while it is written; a torn
        tail ends it); see ``iter_log``. Without ``chunk_bodies``, chunks may come with an
        empty body (their place and size are all an index needs)."""
        directory, log_id = self._log(mailbox_id)
        return iter_log(directory, log_id, tail_ok=True, from_seq=from_seq)

    def log_tree(self, mailbox_id: str | None, size: int) -> MerkleTree:
        """The Merkle tree of a log's first ``size`` records (8.1); raises
        FileNotFoundError or ValueError when its tree file does not hold them."""
        return read_tree(self._log(mailbox_id)[0], size)

    def record_reader(self, mailbox_id: str) -> RecordSource:
        """Reads a mailbox log's records by file and offset (a protocol worker's, 16)."""
        return RecordReader(self.mailbox_log_dir(mailbox_id))

    # -- key files

    def read_key_file(self, mailbox_id: str) -> bytes:
        return self.key_path(mailbox_id).read_bytes()

    def stage_key_file(self, mailbox_id: str, key_file: bytes) -> None:
        """First half of a key change: the new key file sits beside the old one, durable."""
        staged = self.key_path(mailbox_id).with_name("key.new")
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        write_new_file(staged, key_file)

    def commit_key_file(self, mailbox_id: str) -> None:
        """Second half, once the control log records the change: rename over the old."""
        path = self.key_path(mailbox_id)
        os.replace(path.with_name("key.new"), path)
        fsync_dir(path.parent)

    def staged_key_file(self, mailbox_id: str) -> bytes | None:
        try:
            return self.key_path(mailbox_id).with_name("key.new").read_bytes()
        except FileNotFoundError:
            return None

    def discard_staged_key_file(self, mailbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.key_path(mailbox_id).with_name("key.new").unlink()

    # -- the admin account's private files (SPEC.md 2, 13.2) -----------------------------------

    @property
    def admin_dir(self) -> Path:
        return self.root / "admin"

    @property
    def admin_password_path(self) -> Path:
        """The admin password's verifier (the one the control log names)."""
        return self.admin_dir / "password"

    def read_admin_password(self) -> bytes | None:
        try:
            return self.admin_password_path.read_bytes()
        except FileNotFoundError:
            return None

    def stage_admin_password(self, data: bytes) -> None:
        """First half of a password change: the new verifier beside the old one, durable."""
        self.admin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _stage(self.admin_password_path, data)

    def staged_admin_password(self) -> bytes | None:
        try:
            return _staged(self.admin_password_path).read_bytes()
        except FileNotFoundError:
            return None

    def commit_admin_password(self) -> None:
        """Second half, once the control log names the new verifier: rename over the old."""
        os.replace(_staged(self.admin_password_path), self.admin_password_path)
        fsync_dir(self.admin_dir)

    def discard_staged_admin_password(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            _staged(self.admin_password_path).unlink()

    @property
    def admin_token_key_path(self) -> Path:
        return self.admin_dir / "token-key"

    def read_or_create_admin_token_key(self, make: Callable[[], bytes]) -> tuple[bytes, bool]:
        """The key of the token digests the control log records, made once with ``make``
        and kept; returns (key, whether it was made now)."""
        path = self.admin_token_key_path
        try:
            return path.read_bytes(), False
        except FileNotFoundError:
            pass
        self.admin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = make()
        replace_file(path, key)
        return key, True

    @property
    def admin_path(self) -> Path:
        """Where versions before the admin account was a projection of the control log kept
        it (password hash and token digests): read once to migrate it, then removed."""
        return self.admin_dir / "credentials"

    def read_admin_credentials(self) -> bytes | None:
        """The earlier versions' admin account file (SPEC.md 13.2), or None."""
        try:
            return self.admin_path.read_bytes()
        except FileNotFoundError:
            return None

    def remove_admin_credentials(self) -> None:
        """Remove the earlier versions' file (and a replacement of it cut short), durably."""
        for path in (self.admin_path, self.admin_path.with_name("credentials.new")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        fsync_dir(self.admin_dir)

    # -- the chain of custody (SPEC.md 8.1) ---------------------------------------------------

    @property
    def custody_dir(self) -> Path:
        return self.root / "custody"

    def read_signing_key(self) -> bytes | None:
        """The checkpoint signing key (32 bytes, Ed25519), None before the first start."""
        try:
            return (self.custody_dir / "signing-key").read_bytes()
        except FileNotFoundError:
            return None

    def read_or_create_signing_key(self, make: Callable[[], bytes]) -> tuple[bytes, bool]:
        """The checkpoint signing key, made once with ``make`` and kept (mode 0600);
        returns (key, whether it was made now)."""
        found = self.read_signing_key()
        if found is not None:
            return found, False
        path = self.custody_dir / "signing-key"
        self.custody_dir.mkdir(mode=0o700, exist_ok=True)
        key = make()
        replace_file(path, key)
        return key, True

    def save_checkpoint(self, size: int, note: bytes) -> None:
        """Keep a signed checkpoint: ``checkpoints/<size>`` (once) and ``checkpoint``, the
        latest (replaced whole)."""
        folder = self.custody_dir / "checkpoints"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = folder / str(size)
        if not path.exists():
            replace_file(path, note)
        replace_file(self.custody_dir / "checkpoint", note)

    def read_checkpoint(self, size: int | None = None) -> bytes | None:
        """A signed checkpoint of the control log's tree: the latest, or the one of ``size``."""
        path = self.custody_dir / ("checkpoint" if size is None else f"checkpoints/{size}")
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def checkpoint_sizes(self) -> list[int]:
        """The sizes of the control log's signed checkpoints kept, smallest first."""
        try:
            names = os.listdir(self.custody_dir / "checkpoints")
        except FileNotFoundError:
            return []
        return sorted(int(name) for name in names if name.isdigit())

    def save_mailbox_checkpoint(self, mailbox_id: str, note: bytes) -> None:
        """Keep a mailbox log's latest signed checkpoint (``custody/mailboxes/<id>``,
        replaced whole; every earlier one is in the control log)."""
        folder = self.custody_dir / "mailboxes"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        replace_file(folder / parse_mailbox_id(mailbox_id), note)

    def read_mailbox_checkpoint(self, mailbox_id: str) -> bytes | None:
        try:
            return (self.custody_dir / "mailboxes" / parse_mailbox_id(mailbox_id)).read_bytes()
        except FileNotFoundError:
            return None

    # -- copies of the store (gateway store migrate, SPEC.md 17.4) -----------------------------

    def carried_files(self) -> list[str]:
        """What a copy of the store carries besides the logs, by path in the folder: key
        files, the admin password's hash and token key, the signing key and checkpoints,
        the control log's base. Not: TLS material, recovery points, a first admin password
        nobody has read yet, the POP3 proxy's source-key secret (all the node's own)."""
        names = [f"mailboxes/{box}/key" for box in self.list_mailbox_ids()]
        for folder in ("admin", "custody", "custody/checkpoints", "custody/mailboxes"):
            try:
                entries = sorted(os.scandir(self.root / folder), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            names += [
                f"{folder}/{e.name}"
                for e in entries
                if e.is_file() and e.name in _CARRIED.get(folder, {e.name})
            ]
        if (self.control_dir / "base").is_file():
            names.append("control/base")
        return names

    def carries(self, name: str) -> bool:
        """Whether ``name`` is a file a copy of the store carries (see carried_files)."""
        try:
            self._carried_path(name)
        except ValueError:
            return False
        return True

    def read_carried(self, name: str) -> bytes:
        return self._carried_path(name).read_bytes()

    def write_carried(self, name: str, data: bytes) -> None:
        """Write a carried file (0600; its folders 0700), replaced whole."""
        path = self._carried_path(name)
        for folder in reversed(path.relative_to(self.root).parents[:-1]):
            (self.root / folder).mkdir(mode=0o700, exist_ok=True)
        replace_file(path, data)

    def write_log_files(self, log_dir: Path, files: list[tuple[str, bytes]]) -> None:
        """Write a log's segment (and tree) files into a new log folder, durably."""
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=False)
        for name, data in files:
            write_new_file(log_dir / name, data)
        fsync_dir(log_dir)
        fsync_dir(log_dir.parent)

    def _carried_path(self, name: str) -> Path:
        parts = name.split("/")
        if parts[0] == "mailboxes" and len(parts) == 3 and parts[2] == "key":
            return self.key_path(parts[1])
        if parts[:2] == ["custody", "mailboxes"] and len(parts) == 3:
            return self.custody_dir / "mailboxes" / parse_mailbox_id(parts[2])
        if parts[:2] == ["custody", "checkpoints"] and len(parts) == 3 and parts[2].isdigit():
            return self.custody_dir / "checkpoints" / parts[2]
        if len(parts) == 2 and parts[1] in _CARRIED.get(parts[0], ()):
            return self.root / parts[0] / parts[1]
        raise ValueError(f"{name!r} is not a file a copy of the store carries")

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def acme_certificate_path(self) -> Path:
        """The certificate from the ACME CA: its chain, then its key (PEM, 0600)."""
        return self.tls_dir / "acme" / "certificate.pem"

    def read_or_create_acme_account_key(self, make: Callable[[], bytes]) -> bytes:
        """The ACME account's key (PEM), made once with ``make`` and kept (0600)."""
        path = self.tls_dir / "acme" / "account-key.pem"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        self._make_acme_dir()
        pem = make()
        replace_file(path, pem)
        return pem

    def read_acme_certificate(self) -> bytes | None:
        try:
            return self.acme_certificate_path.read_bytes()
        except FileNotFoundError:
            return None

    def write_acme_certificate(self, pem: bytes) -> None:
        """Replace the ACME certificate whole (written, fsynced, renamed, folder fsynced)."""
        self._make_acme_dir()
        replace_file(self.acme_certificate_path, pem)

    def _make_acme_dir(self) -> None:
        folder = self.tls_dir / "acme"
        if folder.is_dir():
            return
        self.tls_dir.mkdir(mode=0o700, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(self.tls_dir)
        fsync_dir(self.root)

    @property
    def tls_certificate(self) -> tuple[Path, Path]:
        """Where the generated certificate and its key are (:meth:`read_or_create_tls`)."""
        return self.tls_dir / "cert.pem", self.tls_dir / "key.pem"

    def read_or_create_tls(self, make: Callable[[], tuple[bytes, bytes]]) -> tuple[Path, Path]:
        """The generated certificate and key (PEM) under <data>/tls, made once with ``make``
        (returning certificate, key) and kept: the fingerprint journaling servers pin stays
        the same across restarts. The key is written 0600 before the certificate, so a crash
        never leaves a certificate without its key."""
        cert, key = self.tls_certificate
        if cert.exists() and key.exists():
            return cert, key
        self.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_pem, key_pem = make()
        for path, data in ((key, key_pem), (cert, cert_pem)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            write_new_file(path, data)
        return cert, key

    def remove_mailbox(self, mailbox_id: str) -> None:
        """Delete a mailbox's folder (after MailboxDeleted is durable in the control log)."""
        directory = self.mailbox_dir(mailbox_id)
        for root, dirs, files in os.walk(directory, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                os.rmdir(os.path.join(root, name))
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(directory)
        fsync_dir(self.mailboxes_dir)

    def copy_to(self, destination: Path) -> int:
        """A consistent copy of the folder while a gateway writes to it (SPEC.md 7): the
        control log is copied whole first, and only then is the rest listed and copied, so
        every commit the copied control log witnesses is in the copied mailbox logs. A file
        compaction deletes meanwhile is skipped (the copied control log cannot need it
        within the grace period). Files are fsynced; returns the bytes copied."""
        destination.mkdir(mode=0o700, parents=True, exist_ok=False)
        copied = _copy_tree(self.control_dir, destination / self.control_dir.name)
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name in (self.control_dir.name, "gateway.lock"):
                continue
            copied += _copy_tree(Path(entry.path), destination / entry.name)
        fsync_dir(destination)
        return copied


def _staged(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _stage(path: Path, data: bytes) -> None:
    staged = _staged(path)
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    write_new_file(staged, data)


def _copy_tree(source: Path, destination: Path) -> int:
    """Copy a file, or a folder depth first, listing each folder as it is reached."""
    if not source.is_dir():
        return _copy_file(source, destination)
    destination.mkdir(mode=0o700)
    copied = 0
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        copied += _copy_tree(Path(entry.path), destination / entry.name)
    fsync_dir(destination)
    return copied


def _copy_file(source: Path, destination: Path) -> int:
    try:
        src = os.open(source, os.O_RDONLY)
    except FileNotFoundError:
        return 0  # removed meanwhile (a superseded segment whose grace ended)
    try:
        dst = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copied = 0
            while block := os.read(src, 1 << 20):
                write_all(dst, block)
                copied += len(block)
            os.fsync(dst)
        finally:
            os.close(dst)
        stat = os.fstat(src)
        os.utime(destination, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    finally:
        os.close(src)
    return copied
