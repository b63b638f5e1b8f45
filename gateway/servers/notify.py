"""systemd's notification protocol (sd_notify(3)), spoken directly: READY=1, RELOADING=1,
STOPPING=1, STATUS=... and WATCHDOG=1 as datagrams to ``$NOTIFY_SOCKET``. Without the
variable (not under systemd) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket
import time

import trio

__all__ = ["SystemdNotifier", "wait_any"]

logger = logging.getLogger("gateway")


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        self._socket: socket.socket | None = None
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec else None
        if address:
            # An address starting with "@" is in the abstract namespace (sd_notify(3)).
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    @classmethod
    def from_environment(cls) -> SystemdNotifier:
        address = os.environ.get("NOTIFY_SOCKET")
        watchdog = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        usec = int(watchdog) if watchdog and watchdog.isdigit() else None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            usec = None  # the watchdog is meant for another process
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def notify(self, *states: str) -> None:
        if self._socket is None or self._address is None:
            return
        message = "\n".join(states).encode()
        try:
            self._socket.sendto(message, self._address)
        except OSError as exc:  # systemd gone or socket full: never a reason to stop serving
            logger.warning("event=sd-notify-failed reason=%r", exc.strerror)

    def reloading(self) -> None:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload).
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    async def watchdog(self) -> None:
        """Send WATCHDOG=1 at half the interval systemd asked for, for as long as it runs.
        It runs on the event loop, so a loop that hangs stops the pings and systemd restarts
        the service, which is the point."""
        if self.watchdog_interval is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


async def wait_any(*events: trio.Event) -> None:
    """Return once any of ``events`` is set (a stop or a reload, whichever comes first)."""
    async with trio.open_nursery() as waiters:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            waiters.cancel_scope.cancel()

        for event in events:
            waiters.start_soon(wait, event)
