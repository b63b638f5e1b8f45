"""The supervising process of a gateway with protocol workers (SPEC.md 16.1).

Theory of operation
-------------------
:class:`Supervisor` is the process systemd sees. It binds the SMTP and POP3 listening sockets
once; every worker inherits them and accepts on them (one accept queue per listener, so a
worker that dies loses no connection waiting to be accepted, and a new worker serves the same
sockets without rebinding). It starts the journal (``gateway serve --role journal``: the data
folder, the admin API, the workers' Unix socket) and ``workers`` protocol workers (``--role
worker``, which wait for the journal's socket) together, each telling it on a pipe when it
serves. Then it tells systemd READY=1
and watches: a worker that exits is replaced at once (backing off up to 5 s if it keeps
failing), a journal that exits is restarted (its workers, having lost it, stop and are
replaced). SIGTERM drains the workers (they stop accepting and finish their sessions within
``shutdown_grace``), then stops the journal; SIGHUP is passed to every child (certificates
reloaded). Every child holds the read end of a *lifeline* pipe whose only writer is this
process: if the supervisor dies, even by kill -9, the pipe ends and every child exits at
once, so no orphan keeps a port or a log open.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..config import Config, Protocol
from .load import GONE, LOAD_FD, WorkerLoads
from .notify import SystemdNotifier, wait_any
from .sockets import Bound, StartupError, bind

__all__ = ["LIFELINE_FD", "READY_FD", "Supervisor"]

logger = logging.getLogger("gateway")

# Environment variables a child finds its inherited pipes in.
READY_FD = "GATEWAY_READY_FD"
LIFELINE_FD = "GATEWAY_LIFELINE_FD"
# How long a child may take to say it serves.
START_TIMEOUT = 60.0
# Restart backoff for a child that keeps failing right after its start.
FIRST_BACKOFF, MAX_BACKOFF = 0.1, 5.0
# A child that ran at least this long is healthy: its next failure restarts it at once.
HEALTHY_AFTER = 10.0


@dataclass(eq=False)
class _Child:
    name: str
    argv: list[str]
    process: trio.Process | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    stopping: bool = False
    slot: int | None = None  # a worker's in the shared session counts (servers/load.py)
    served: bool = False  # it said it served, at least once
    ready: trio.Event = field(default_factory=trio.Event)


class Supervisor:
    """One journal and ``workers`` protocol workers, kept running."""

    def __init__(self, config: Config, command: Sequence[str], workers: int) -> None:
        """``command``: how to run this gateway's ``serve`` with its configuration (the
        children add their role)."""
        self.config = config
        self.command = list(command)
        self.workers = workers
        self.notifier = SystemdNotifier.from_environment()
        self.listening: list[Bound] = []
        self._stop = trio.Event()
        self._reload = trio.Event()
        self._children: list[_Child] = []

    def request_shutdown(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self) -> None:
        runtime = Path(tempfile.mkdtemp(prefix="gateway-"))  # 0700: the journal's socket
        socket_path = runtime / "journal.sock"
        lifeline_read, lifeline_write = os.pipe()
        self.loads = WorkerLoads.create(self.workers)
        try:
            self.listening = await bind(
                [cfg for cfg in self.config.listeners if cfg.protocol != Protocol.ADMIN]
            )
            for bound in self.listening:
                bound.announce()
            inherited = [
                f"{b.config.name}={','.join(str(s.socket.fileno()) for s in b.sockets)}"
                for b in self.listening
            ]
            listen_fds = [s.socket.fileno() for b in self.listening for s in b.sockets]
            for fd in listen_fds:
                os.set_inheritable(fd, True)
            journal = _Child(
                "journal",
                [*self.command, "--role", "journal", "--journal-socket", str(socket_path)],
            )
            workers = [
                _Child(
                    f"worker-{n}",
                    [
                        *self.command,
                        "--role",
                        "worker",
                        "--name",
                        f"worker-{n}",
                        "--journal-socket",
                        str(socket_path),
                        *[arg for spec in inherited for arg in ("--listen", spec)],
                    ],
                )
                for n in range(1, self.workers + 1)
            ]
            for slot, worker in enumerate(workers):
                worker.slot = slot
            self._children = [journal, *workers]
            async with trio.open_nursery() as nursery:
                # All at once: a worker imports and starts while the journal opens the data
                # folder, then waits for the journal's socket.
                await nursery.start(self._keep, journal, lifeline_read, [], nursery)
                for worker in workers:
                    await nursery.start(self._keep, worker, lifeline_read, listen_fds, nursery)
                with trio.fail_after(START_TIMEOUT):
                    for child in (journal, *workers):
                        await child.ready.wait()
                self.notifier.notify("READY=1", f"STATUS=journal and {self.workers} workers")
                logger.info("event=supervisor-ready workers=%d", self.workers)
                nursery.start_soon(self.notifier.watchdog)
                await self._wait_for_signals()
                self.notifier.notify("STOPPING=1")
                await self._shut_down(journal, workers)
                nursery.cancel_scope.cancel()
        finally:
            for bound in self.listening:
                bound.close()
            os.close(lifeline_write)
            os.close(lifeline_read)
            self.loads.close()
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
            with contextlib.suppress(OSError):
                os.rmdir(runtime)
            self.notifier.close()

    async def _wait_for_signals(self) -> None:
        while not self._stop.is_set():
            await wait_any(self._stop, self._reload)
            if self._reload.is_set():
                self._reload = trio.Event()
                self.notifier.reloading()
                self._signal_all(signal.SIGHUP)
                self.notifier.notify("READY=1")

    def _signal_all(self, signum: signal.Signals) -> None:
        for child in self._children:
            if child.process is not None and child.process.returncode is None:
                child.process.send_signal(signum)

    async def _shut_down(self, journal: _Child, workers: list[_Child]) -> None:
        """Workers first (they drain their sessions), then the journal (GatewayStopped)."""
        grace = self.config.shutdown_grace + 10
        for group in (workers, [journal]):
            for child in group:
                child.stopping = True
                if child.process is not None and child.process.returncode is None:
                    child.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                for child in group:
                    if child.process is not None:
                        await child.process.wait()
            for child in group:
                if child.process is not None and child.process.returncode is None:
                    logger.error("event=child-killed name=%s reason='did not stop'", child.name)
                    child.process.kill()
                    await child.process.wait()

    async def _keep(
        self,
        child: _Child,
        lifeline: int,
        listen_fds: list[int],
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one child for good: start it, and start it again whenever it exits, unless
        the supervisor is stopping."""
        started = False
        while True:
            ready_read, ready_write = os.pipe()
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
            }
            env[READY_FD], env[LIFELINE_FD] = str(ready_write), str(lifeline)
            pass_fds = [ready_write, lifeline, *listen_fds, self.loads.fd]
            env[LOAD_FD] = self.loads.spec(child.slot)  # the journal reads them for status
            try:
                process = await trio.lowlevel.open_process(child.argv, env=env, pass_fds=pass_fds)
            finally:
                os.close(ready_write)
            child.process, child.started_at = process, trio.current_time()
            child.ready = trio.Event()
            logger.info("event=child-started name=%s pid=%d", child.name, process.pid)
            nursery.start_soon(_wait_ready, ready_read, child)
            if not started:
                started = True
                task_status.started()
            code = await process.wait()
            if child.slot is not None:
                self.loads.set(child.slot, GONE)  # nobody waits for a worker that is gone
            if child.stopping or self._stop.is_set():
                return
            if not child.served:
                raise StartupError(f"the {child.name} exited with code {code} before it served")
            ran = trio.current_time() - child.started_at
            child.backoff = FIRST_BACKOFF if ran >= HEALTHY_AFTER else child.backoff
            logger.error(
                "event=child-exited name=%s pid=%d code=%s restart_in=%.1f",
                child.name,
                process.pid,
                code,
                0 if ran >= HEALTHY_AFTER else child.backoff,
            )
            if ran < HEALTHY_AFTER:
                await trio.sleep(child.backoff)
                child.backoff = min(MAX_BACKOFF, child.backoff * 2)


async def _wait_ready(fd: int, child: _Child) -> None:
    """A child writes a line on its ready pipe once it serves (or closes it: it died)."""
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            data = os.read(fd, 64)
            if not data:
                return
            if b"ready" in data:
                child.served = True
                child.ready.set()
    finally:
        os.close(fd)


def watch_lifeline(fd: int) -> None:
    """In a child: end this process the moment the supervisor is gone (its pipe closed)."""

    async def watch() -> None:
        await trio.lowlevel.wait_readable(fd)
        if not os.read(fd, 1):
            logger.error("event=supervisor-gone reason='lifeline closed; exiting'")
            sys.stderr.flush()
            os._exit(70)

    trio.lowlevel.spawn_system_task(watch)


def tell_ready(fd: int) -> None:
    """In a child: tell the supervisor it serves."""
    with contextlib.suppress(OSError):
        os.write(fd, b"ready\n")
        os.close(fd)
