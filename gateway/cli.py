"""Command line: ``gateway serve``, ``gateway verify`` and ``gateway backup``.

Exit codes (SPEC.md, "Command line"): 0 success, 1 verification found problems, 2 usage or
configuration error, 3 the data folder is in use or cannot be opened.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import trio

from . import __version__, logs
from ._groups import leaves
from .cli_admin_args import ADMIN_COMMANDS, add_admin_commands
from .cli_custody import add_custody_command, add_proof_command, run_custody, run_proof
from .cli_store import add_store_command, run_store, verify_fleet
from .config import Config, ConfigError, load_config
from .log import DataDir, DataDirLocked, LogCorrupt
from .servers.journal_socket import JournalLost
from .servers.load import LOAD_FD, WorkerLoads
from .servers.sockets import StartupError
from .servers.supervisor import LIFELINE_FD, READY_FD, Supervisor, tell_ready, watch_lifeline

if TYPE_CHECKING:
    from .servers.gateway import Gateway

# The admin client, the verifier and the gateway itself are imported by the commands that run
# them: the supervisor, which only binds and starts its children, starts in a third of the
# time without them (SPEC.md 16.1).

__all__ = ["main"]

DEFAULT_DATA_DIR = Path("var")
EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_TEMPFAIL = 75  # a worker that lost its journal: its supervisor starts another

logger = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Email archiving gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="TOML configuration (default: embedded)")
    serve.add_argument("--data-dir", type=Path, help="data folder (overrides the config's)")
    serve.add_argument(
        "--workers",
        type=int,
        help="protocol worker processes (default [server] workers: one per usable core; "
        "0: everything in one process)",
    )
    # What the supervisor runs its children with (SPEC.md 16.1); not for people.
    serve.add_argument("--role", choices=["journal", "worker"], help=argparse.SUPPRESS)
    serve.add_argument("--journal-socket", type=Path, help=argparse.SUPPRESS)
    serve.add_argument("--name", default="worker", help=argparse.SUPPRESS)
    serve.add_argument("--listen", action="append", default=[], help=argparse.SUPPRESS)

    verify = commands.add_parser(
        "verify", help="check every log of a data folder (read-only, safe while serving)"
    )
    verify.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    verify.add_argument(
        "--mailbox",
        help="also decrypt and check every message of this mailbox (password on stdin)",
    )
    verify.add_argument(
        "--dsn",
        help="verify a fleet store (PostgreSQL connection string) instead of a data folder",
    )
    verify.add_argument(
        "--scratch",
        type=Path,
        help="with --dsn: where the temporary copy goes (default: the system's temp folder)",
    )
    add_custody_command(commands, DEFAULT_DATA_DIR)
    add_proof_command(commands, DEFAULT_DATA_DIR)
    backup = commands.add_parser(
        "backup", help="copy the data folder consistently while the gateway runs, then verify"
    )
    backup.add_argument("destination", type=Path, help="a folder that does not exist yet")
    backup.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    add_store_command(commands, DEFAULT_DATA_DIR)
    add_admin_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ADMIN_COMMANDS:
        from .cli_admin import run_admin_command  # noqa: PLC0415 (lazily: start time)

        return run_admin_command(args)
    logs.configure(sys.stderr)  # under systemd: priority prefixes, no timestamps (logs.py)
    if args.command == "serve":
        return _serve(args)
    if args.command == "verify" and args.dsn:
        return verify_fleet(args.dsn, args.scratch, args.mailbox)
    if args.command == "verify":
        return _verify(args.data_dir, args.mailbox)
    if args.command == "custody":
        return run_custody(args)
    if args.command == "proof":
        return run_proof(args)
    if args.command == "backup":
        return _backup(args.data_dir, args.destination)
    if args.command == "store":
        return run_store(args)
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands


def _verify(data_dir: Path, mailbox: str | None) -> int:
    from .verify import (  # noqa: PLC0415 (lazily: start time)
        print_report,
        progress_printer,
        verify_data_dir,
    )

    password = None
    if mailbox is not None:
        password = sys.stdin.readline().rstrip("\r\n")
    interactive = sys.stderr.isatty()
    report = verify_data_dir(
        data_dir, mailbox_id=mailbox, password=password, progress=progress_printer(interactive)
    )
    if interactive:
        print(file=sys.stderr)
    print_report(report)
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _backup(data_dir: Path, destination: Path) -> int:
    data = DataDir(data_dir)
    if not data.control_dir.is_dir():
        logger.error("event=backup-failed reason=%r", f"{data_dir} is not a data folder")
        return EXIT_USAGE
    try:
        copied = data.copy_to(destination)
    except OSError as exc:
        logger.error("event=backup-failed reason=%r", str(exc))
        return EXIT_UNAVAILABLE
    logger.info("event=backup-copied destination=%s bytes=%d", destination, copied)
    return _verify(destination, None)


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, data_dir=args.data_dir)
    except ConfigError as exc:
        logger.error("event=config-error reason=%r", str(exc))
        return EXIT_USAGE
    if config.store.kdf.insecure_fast_for_tests:
        logger.warning(
            "event=insecure-kdf memory_kib=%d iterations=%d reason=%r",
            config.store.kdf.memory_kib,
            config.store.kdf.iterations,
            "store.kdf.insecure_fast_for_tests is set: Argon2id may be cheap enough to "
            "brute-force mailbox passwords; for test suites only",
        )
    workers = args.workers if args.workers is not None else config.server.worker_count()
    failures: list[BaseException] = []
    lost: list[BaseException] = []
    try:
        if args.role is not None:
            trio.run(_serve_child, config, args)
        elif workers == 0:
            from .servers.gateway import Gateway  # noqa: PLC0415 (lazily: start time)

            gateway = Gateway(
                config, announce_admin_password=admin_password_announcer(Path(config.data_dir))
            )
            trio.run(_serve_async, gateway)
        else:
            trio.run(_supervise, config, _child_command(config, args), workers)
    except* JournalLost as group:
        lost.extend(leaves(group))
    except* (StartupError, DataDirLocked, LogCorrupt, trio.TooSlowError) as group:
        failures.extend(leaves(group))
    for failure in lost:
        logger.error("event=journal-lost reason=%r", str(failure))
    for failure in failures:
        logger.error("event=start-failed reason=%r", str(failure) or type(failure).__name__)
    if lost:
        return EXIT_TEMPFAIL
    return EXIT_UNAVAILABLE if failures else EXIT_OK


async def _serve_child(config: Config, args: argparse.Namespace) -> None:
    """A journal or a protocol worker under a supervisor."""
    from .servers.gateway import Gateway, Role  # noqa: PLC0415 (lazily: start time)

    name = "journal" if args.role == Role.JOURNAL else args.name
    logs.name_lines(name)  # whose line it is, in a shared log
    lifeline = os.environ.get(LIFELINE_FD)
    if lifeline is not None:
        watch_lifeline(int(lifeline))
    ready = os.environ.get(READY_FD)
    inherited = {}
    for spec in args.listen:
        name, _, fds = spec.partition("=")
        inherited[name] = [int(fd) for fd in fds.split(",") if fd]
    gateway = Gateway(
        config,
        announce_admin_password=admin_password_announcer(Path(config.data_dir)),
        role=Role(args.role),
        journal_socket=args.journal_socket,
        inherited=inherited if args.role == Role.WORKER else None,
        name=args.name,
        on_ready=(lambda: tell_ready(int(ready))) if ready is not None else None,
        loads=WorkerLoads.inherited(os.environ[LOAD_FD]) if LOAD_FD in os.environ else None,
    )
    await _serve_async(gateway)


def _child_command(config: Config, args: argparse.Namespace) -> list[str]:
    """How the supervisor runs its children: this configuration, absolute paths."""
    command = [sys.executable, "-m", "gateway", "serve"]
    if args.config is not None:
        command += ["--config", str(args.config.resolve())]
    return [*command, "--data-dir", str(Path(config.data_dir).resolve())]


async def _supervise(config: Config, command: list[str], workers: int) -> None:
    await _serve_async(Supervisor(config, command, workers))


# Set by systemd for the processes of a unit: standard output is the journal then.
SERVICE_MANAGER_VARIABLES = ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET")


def admin_password_announcer(
    data_dir: Path,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
) -> Callable[[str], None]:
    """Where a generated first admin password goes (SPEC.md 13.2): on the terminal, if
    standard output is one and no service manager runs the gateway; otherwise (systemd, a
    pipe, a file: a journal or a log, kept and readable by others) into a mode 0600 file in
    the data folder, of which only the path is logged."""
    environ = os.environ if environ is None else environ

    def announce(password: str) -> None:
        out = sys.stdout if stdout is None else stdout
        managed = any(name in environ for name in SERVICE_MANAGER_VARIABLES)
        if out.isatty() and not managed:
            print(
                "\n"
                "  The admin account has been created. Its password is shown this once:\n"
                f"\n      {password}\n\n"
                "  Log in to the console (https://<host>:8450/) or the command line with it,\n"
                "  then change it with `gateway admin passwd`. Only its Argon2id hash is stored.\n",
                file=out,
                flush=True,
            )
            return
        from .services.accounts import write_initial_password  # noqa: PLC0415 (lazily: start time)

        try:
            path = write_initial_password(data_dir, password)
        except OSError as exc:
            raise StartupError(
                f"cannot write the generated admin password to {data_dir}: {exc}; remove "
                f"{DataDir(data_dir).admin_password_path} and start again with "
                "admin.password_file or GATEWAY_ADMIN_PASSWORD"
            ) from None
        logger.warning(
            "event=admin-password-file path=%s reason=%r",
            path,
            "the generated first admin password is in this file (mode 0600), not in the log; "
            "log in with it and change it (gateway admin passwd): the first login deletes it",
        )

    return announce


async def _serve_async(gateway: Gateway | Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def route() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        gateway.request_reload()
                    else:
                        logger.info("event=signal signal=%s", signal.Signals(signum).name)
                        gateway.request_shutdown()

            nursery.start_soon(route)
            try:
                await gateway.run()
            finally:
                nursery.cancel_scope.cancel()
