"""Command line: ``gateway serve`` and ``gateway verify``.

Exit codes (SPEC.md, "Command line"): 0 success, 1 verification found problems, 2 usage or
configuration error, 3 the data folder is in use or cannot be opened.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import trio

from . import __version__
from .events import GatewayStarted, GatewayStopped, now
from .log import DataDirLocked, LogCorrupt
from .services.archive import Archive
from .services.keyforge import KeyForge
from .verify import print_report, verify_data_dir

__all__ = ["main"]

DEFAULT_DATA_DIR = Path("var")
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

logger = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Email archiving gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)

    verify = commands.add_parser(
        "verify", help="check every log of a data folder (read-only, safe while serving)"
    )
    verify.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    verify.add_argument(
        "--mailbox",
        help="also decrypt and check every message of this mailbox (password on stdin)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    if args.command == "serve":
        return _serve(args.data_dir)
    if args.command == "verify":
        return _verify(args.data_dir, args.mailbox)
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


def _verify(data_dir: Path, mailbox: str | None) -> int:
    password = None
    if mailbox is not None:
        password = sys.stdin.readline().rstrip("\r\n")
    interactive = sys.stderr.isatty()

    def progress(where: str, count: int) -> None:
        if interactive:
            print(f"\r{where}: {count} records ", end="", file=sys.stderr, flush=True)
        elif count % 100_000 == 0:
            print(f"progress: {where}: {count} records", file=sys.stderr, flush=True)

    report = verify_data_dir(data_dir, mailbox_id=mailbox, password=password, progress=progress)
    if interactive:
        print(file=sys.stderr)
    print_report(report)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _serve(data_dir: Path) -> int:
    try:
        trio.run(_serve_async, data_dir.resolve())
    except DataDirLocked as exc:
        logger.error("event=start-failed reason=%r", str(exc))
        return EXIT_UNAVAILABLE
    except LogCorrupt as exc:
        logger.error("event=start-failed reason=%r", str(exc))
        return EXIT_UNAVAILABLE
    return EXIT_OK


async def _maintenance(archive: Archive) -> None:
    while True:
        await trio.sleep(archive.config.maintenance_interval)
        reclaimed, deleted = await archive.maintain()
        if reclaimed or deleted:
            logger.info("event=compacted reclaimed_bytes=%d files_deleted=%d", reclaimed, deleted)


async def _serve_async(data_dir: Path) -> None:
    archive = await Archive.open(data_dir)
    try:
        await archive.append_control(GatewayStarted(at=now(), version=__version__))
        damaged = [m.mailbox_id for m in archive.mailboxes() if archive.damaged(m.mailbox_id)]
        logger.info(
            "event=started data_dir=%s mailboxes=%d damaged=%d recovered_tails=%d",
            data_dir,
            len(archive.mailboxes()),
            len(damaged),
            len(archive.recoveries),
        )
        async with trio.open_nursery() as nursery:
            forge = KeyForge()
            await nursery.start(forge.run)
            archive.key_forge = forge
            nursery.start_soon(_maintenance, archive)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info("event=stopping signal=%s", signal.Signals(signum).name)
                    break
            nursery.cancel_scope.cancel()
        await archive.append_control(GatewayStopped(at=now(), reason="signal"))
    finally:
        await archive.aclose()
