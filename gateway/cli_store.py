"""``gateway store``: ``migrate``, a data folder copied into a fleet store (PostgreSQL), or a
fleet store copied into a new data folder, every chain checked on the way (SPEC.md 17.4);
``writers`` and ``retire``, the node processes that write into a fleet store (17.5)."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["add_store_command", "run_store"]

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def add_store_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], default_data_dir: Path
) -> None:
    store = commands.add_parser("store", help="copy a store between a data folder and PostgreSQL")
    verbs = store.add_subparsers(dest="verb", required=True)
    migrate = verbs.add_parser(
        "migrate",
        help="copy the data folder into the fleet store (resumable), or with --out the "
        "fleet store into a new data folder; verified",
    )
    migrate.add_argument("--data-dir", type=Path, default=default_data_dir)
    migrate.add_argument(
        "--out", action="store_true", help="from the fleet store into --data-dir (a new folder)"
    )
    listing = verbs.add_parser(
        "writers", help="list the node processes that write into the fleet store"
    )
    retire = verbs.add_parser(
        "retire",
        help="end the writers of a node taken out of the fleet for good, so compaction drops "
        "what it left half written",
    )
    retire.add_argument("node", help="the node's name ([store] node)")
    for verb in (migrate, listing, retire):
        verb.add_argument(
            "--dsn",
            help="the fleet store's libpq connection string (default: $GATEWAY_STORE_DSN)",
        )


def run_store(args: argparse.Namespace) -> int:
    dsn = args.dsn or os.environ.get("GATEWAY_STORE_DSN")
    if not dsn:
        print(f"gateway store {args.verb}: give --dsn (or set GATEWAY_STORE_DSN)", file=sys.stderr)
        return EXIT_USAGE
    if args.verb == "migrate":
        return _migrate(args, dsn)
    return _writers(args, dsn)


def _writers(args: argparse.Namespace, dsn: str) -> int:
    """``writers``: one line a writer; ``retire``: exit 0 once every writer of the node has
    ended, 1 when one still runs (left as it is)."""
    import psycopg  # noqa: PLC0415 (lazily: only this command needs it)

    from .fleet import SchemaError, ensure_schema, retire_node, writers  # noqa: PLC0415

    try:
        with psycopg.connect(dsn, autocommit=True, application_name="gateway-store") as conn:
            ensure_schema(conn)
            if args.verb == "retire":
                running = retire_node(conn, args.node)
                for writer in running:
                    print(f"writer {writer} of {args.node} is running: stop that node first")
                return EXIT_PROBLEMS if running else EXIT_OK
            for w in writers(conn):
                ended = w.ended_at.isoformat(timespec="seconds") if w.ended_at else "-"
                state = "running" if w.running else ("ended" if w.ended_at else "gone")
                started = w.started_at.isoformat(timespec="seconds")
                print(f"{w.writer} {w.node} {state} started {started} ended {ended}")
    except SchemaError as exc:
        print(f"gateway store {args.verb}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except psycopg.Error as exc:
        print(f"gateway store {args.verb}: the fleet store: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def _migrate(args: argparse.Namespace, dsn: str) -> int:
    import psycopg  # noqa: PLC0415 (lazily: only this command needs it)

    from .fleet import MigrateError, migrate_in, migrate_out, snapshot  # noqa: PLC0415
    from .log import DataDir, DataDirLocked, LogCorrupt  # noqa: PLC0415
    from .verify import print_report  # noqa: PLC0415

    def progress(where: str, count: int) -> None:
        print(f"{where}: {count}", file=sys.stderr, flush=True)

    data = DataDir(args.data_dir)
    try:
        with psycopg.connect(dsn, autocommit=True, application_name="gateway-migrate") as conn:
            if args.out:
                with snapshot(conn):  # nodes may be running
                    done = migrate_out(conn, data, progress)
            else:
                done = migrate_in(data, conn, progress)
    except (MigrateError, DataDirLocked) as exc:
        print(f"gateway store migrate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LogCorrupt as exc:
        print(f"gateway store migrate: {exc}", file=sys.stderr)
        return EXIT_PROBLEMS
    except psycopg.Error as exc:
        print(f"gateway store migrate: the fleet store: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    print(f"logs {done.logs} records {done.records} files {done.files}")
    if done.report is not None:
        print_report(done.report)
        return EXIT_OK if done.report.ok else EXIT_PROBLEMS
    return EXIT_OK


def verify_fleet(dsn: str, scratch: Path | None, mailbox: str | None) -> int:
    """``gateway verify --dsn``: the fleet store verified as a data folder in a temporary
    folder, which holds the control log and the carried files, and each mailbox log only
    while it is verified (every chain checked as its records are framed); then removed."""
    import psycopg  # noqa: PLC0415 (lazily: only this command needs it)

    from .fleet import MigrateError, copy_log_out, copy_out, snapshot  # noqa: PLC0415
    from .ids import InvalidId, parse_mailbox_id  # noqa: PLC0415
    from .log import DataDir, LogCorrupt  # noqa: PLC0415
    from .verify import print_report, progress_printer, verify_data_dir  # noqa: PLC0415

    password = sys.stdin.readline().rstrip("\r\n") if mailbox is not None else None
    interactive = sys.stderr.isatty()
    with tempfile.TemporaryDirectory(prefix="gateway-verify-", dir=scratch) as folder:
        data = DataDir(Path(folder) / "data")
        try:
            with (
                psycopg.connect(dsn, autocommit=True, application_name="gateway-verify") as conn,
                snapshot(conn),  # every log as it was when verify began, nodes running or not
            ):
                copy_out(conn, data, lambda where, count: None, mailbox_logs=False)

                @contextlib.contextmanager
                def fetched(box_id: str) -> Iterator[None]:
                    try:
                        log_id = bytes.fromhex(parse_mailbox_id(box_id))
                    except InvalidId:
                        yield  # verify reports the mailbox it does not know
                        return
                    copy_log_out(conn, data, log_id)
                    try:
                        yield
                    finally:
                        shutil.rmtree(data.mailbox_log_dir(log_id.hex()), ignore_errors=True)

                report = verify_data_dir(
                    data.root,
                    mailbox_id=mailbox,
                    password=password,
                    progress=progress_printer(interactive),
                    fetch=fetched,
                )
        except MigrateError as exc:
            print(f"gateway verify: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except LogCorrupt as exc:
            print(f"PROBLEM: {exc}")
            print("FAILED: 1 problem(s)")
            return EXIT_PROBLEMS
        except psycopg.Error as exc:
            print(f"gateway verify: the fleet store: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    if interactive:
        print(file=sys.stderr)
    print_report(report)
    return EXIT_OK if report.ok else EXIT_PROBLEMS
