"""What a data folder keeps in files, kept by the fleet store in ``gateway_files`` (SPEC.md
17.2): the same names (``mailboxes/<id>/key``, ``admin/password``, ``custody/...``), the same
calls as ``DataDir``'s, so the archive keeps them through one interface whichever store it is
on.

Theory of operation
-------------------
A write is one statement, so it is whole or not at all; durable once it returns (committed,
and replicated to a synchronous standby). A change in two halves (a key file or the admin
password's verifier: staged, the control event, then made current) keeps its halves, so a
node that crashes in between leaves what the next open settles exactly as in a data folder
(SPEC.md 6.5, 13.2): the staged value under ``<name>.new``, made current by renaming the row
in one transaction. Something made once (the token key, the signing key) is inserted only if
absent and read back, so two nodes starting at once agree on one.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ids import parse_mailbox_id
from ._session import Session

__all__ = ["FleetFiles"]

_STAGED = ".new"


class FleetFiles:
    """The files of one fleet store, through a session (its calls raise StoreUnavailable)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- one file

    def read(self, name: str) -> bytes | None:
        with self.session.use() as conn:
            row = conn.execute("SELECT data FROM gateway_files WHERE name = %s", (name,))
            found = row.fetchone()
        return None if found is None else bytes(found[0])

    def write(self, name: str, data: bytes) -> None:
        with self.session.use() as conn:
            conn.execute(
                "INSERT INTO gateway_files (name, data) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                (name, data),
            )

    def remove(self, name: str) -> None:
        with self.session.use() as conn:
            conn.execute("DELETE FROM gateway_files WHERE name = %s", (name,))

    def read_or_create(self, name: str, make: Callable[[], bytes]) -> tuple[bytes, bool]:
        """The file, made once with ``make`` if absent (whoever inserts first wins)."""
        found = self.read(name)
        if found is not None:
            return found, False
        made = make()
        with self.session.use() as conn:
            inserted = conn.execute(
                "INSERT INTO gateway_files (name, data) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, made),
            ).fetchone()
        if inserted is not None:
            return made, True
        return self.read(name) or made, False  # another node made it meanwhile

    def stage(self, name: str, data: bytes) -> None:
        self.write(name + _STAGED, data)

    def staged(self, name: str) -> bytes | None:
        return self.read(name + _STAGED)

    def commit(self, name: str) -> None:
        """Make the staged value current (one transaction); nothing when none is staged
        (another node made it current already)."""
        with self.session.use() as conn, conn.transaction():
            conn.execute(
                "DELETE FROM gateway_files WHERE name = %s "
                "AND EXISTS (SELECT 1 FROM gateway_files WHERE name = %s)",
                (name, name + _STAGED),
            )
            conn.execute(
                "UPDATE gateway_files SET name = %s WHERE name = %s", (name, name + _STAGED)
            )

    def discard_staged(self, name: str) -> None:
        self.remove(name + _STAGED)

    # -- as DataDir names them

    def read_key_file(self, mailbox_id: str) -> bytes:
        found = self.read(_key(mailbox_id))
        if found is None:
            raise FileNotFoundError(2, "no key file in the fleet store", _key(mailbox_id))
        return found

    def stage_key_file(self, mailbox_id: str, key_file: bytes) -> None:
        self.stage(_key(mailbox_id), key_file)

    def commit_key_file(self, mailbox_id: str) -> None:
        self.commit(_key(mailbox_id))

    def staged_key_file(self, mailbox_id: str) -> bytes | None:
        return self.staged(_key(mailbox_id))

    def discard_staged_key_file(self, mailbox_id: str) -> None:
        self.discard_staged(_key(mailbox_id))

    def read_admin_password(self) -> bytes | None:
        return self.read("admin/password")

    def stage_admin_password(self, data: bytes) -> None:
        self.stage("admin/password", data)

    def staged_admin_password(self) -> bytes | None:
        return self.staged("admin/password")

    def commit_admin_password(self) -> None:
        self.commit("admin/password")

    def discard_staged_admin_password(self) -> None:
        self.discard_staged("admin/password")

    def read_or_create_admin_token_key(self, make: Callable[[], bytes]) -> tuple[bytes, bool]:
        return self.read_or_create("admin/token-key", make)

    def read_signing_key(self) -> bytes | None:
        return self.read("custody/signing-key")

    def read_or_create_signing_key(self, make: Callable[[], bytes]) -> tuple[bytes, bool]:
        return self.read_or_create("custody/signing-key", make)

    def save_checkpoint(self, size: int, note: bytes) -> None:
        with self.session.use() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO gateway_files (name, data) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (f"custody/checkpoints/{size}", note),
            )
            self.write("custody/checkpoint", note)

    def read_checkpoint(self, size: int | None = None) -> bytes | None:
        return self.read("custody/checkpoint" if size is None else f"custody/checkpoints/{size}")

    def checkpoint_sizes(self) -> list[int]:
        with self.session.use() as conn:
            rows = conn.execute(
                "SELECT name FROM gateway_files WHERE name LIKE 'custody/checkpoints/%'"
            ).fetchall()
        return sorted(int(name.rsplit("/", 1)[1]) for (name,) in rows)

    def save_mailbox_checkpoint(self, mailbox_id: str, note: bytes) -> None:
        self.write(f"custody/mailboxes/{parse_mailbox_id(mailbox_id)}", note)

    def read_mailbox_checkpoint(self, mailbox_id: str) -> bytes | None:
        return self.read(f"custody/mailboxes/{parse_mailbox_id(mailbox_id)}")


def _key(mailbox_id: str) -> str:
    return f"mailboxes/{parse_mailbox_id(mailbox_id)}/key"
