"""The systemd notify protocol (sd_notify(3)) in a few lines, without libsystemd.

systemd passes `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) to a `Type=notify`
service; each message is one AF_UNIX datagram of `KEY=VALUE` lines. Without `NOTIFY_SOCKET`
(not under systemd, or in tests) every call is a no-op. A datagram send on a non-blocking socket
either goes at once or fails at once, so these plain functions are safe inside the trio loop.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import NoReturn

import trio

logger = logging.getLogger(__name__)


def _socket_address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]  # Linux abstract namespace
    if address.startswith("/"):
        return address
    return None  # unset, or a kind we do not speak (vsock:)


def notify(message: str) -> bool:
    """Send one notification; False when there is no socket or the send failed (logged)."""
    address = _socket_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(address)
            sock.send(message.encode())
    except OSError as exc:
        logger.warning("systemd notification failed", extra={"error": str(exc)})
        return False
    return True


def ready() -> bool:
    """Start-up has completed (contract §6): systemd moves the unit to `active`."""
    return notify("READY=1")


def stopping() -> bool:
    """The shutdown path has begun.

    With a watchdog, one last ping goes with it: the watchdog task is cancelled with the other
    children, and the shutdown (API drain, cleanup, report) then has a full WatchdogSec.
    """
    return notify("STOPPING=1\nWATCHDOG=1" if watchdog_interval() else "STOPPING=1")


def status(text: str) -> bool:
    """One line shown by `systemctl status`."""
    return notify("STATUS=" + " ".join(text.split()))


def watchdog_interval() -> float | None:
    """Seconds between keep-alive pings (half of WatchdogSec), None when no watchdog is armed."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # the watchdog is armed for another process (our parent, say)
    return int(usec) / 1_000_000 / 2


async def run_watchdog(
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> NoReturn:
    """Ping systemd's watchdog every WatchdogSec/2 while the event loop runs; else just wait.

    A loop blocked for WatchdogSec misses its pings and systemd kills the service (SIGABRT):
    systemd then restarts it (Restart=on-failure), and the new process adopts the containers.
    """
    interval = watchdog_interval()
    task_status.started()
    if interval is None or _socket_address() is None:
        await trio.sleep_forever()
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(interval)
