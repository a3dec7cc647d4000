"""Running `rclone mount --daemon` and asking the kernel whether its mount is there.

Timeouts belong to the caller: each function here runs until it is done or cancelled.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import trio
from trio.lowlevel import RunVar

from fractal_hostd.cloud_storage.mountinfo import is_mounted, read_mounts
from fractal_hostd.cloud_storage.rclone_config import scrub
from fractal_hostd.process.child_process import run_child

logger = logging.getLogger(__name__)

FUSE_RCLONE = "fuse.rclone"
MOUNT_POLL_INTERVAL = 0.05
HEALTH_CHECK_LIMIT = 2.0
# A stat of a hung FUSE mount never returns, and an abandoned thread keeps its limiter token
# until it does. On trio's default limiter (40 threads, shared by the whole process) enough
# health checks of one hung mount would leave no thread for anything else: mountinfo reads,
# file work, the Sentry flush. The checks get a few threads of their own instead.
HEALTH_CHECK_THREADS = 4
_health_check_limiter: RunVar[trio.CapacityLimiter] = RunVar("health_check_limiter")


async def run_mount_command(argv: list[str], secrets: list[str]) -> str | None:
    """None once `rclone mount --daemon` exited 0, else why not (scrubbed of `secrets`)."""
    # The allow-listed environment keeps out RCLONE_* (they would override our config file),
    # NOTIFY_SOCKET (rclone speaks sd_notify too: systemd must hear only us) and every secret.
    try:
        result = await run_child(argv)
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc.strerror}"
    if result.returncode != 0:
        output = (result.stderr or result.stdout).decode(errors="replace")
        detail = scrub(output, secrets) or "no output"
        return f"rclone mount failed (exit {result.returncode}): {detail}"
    return None


async def wait_until_mounted(mountinfo: Path, mount_point: Path) -> None:
    """Returns once the kernel lists a `fuse.rclone` mount at `mount_point`."""
    # The kernel announces mount changes only as POLLPRI on mountinfo; a short poll is
    # simpler, and the wait is normally one round: `rclone mount --daemon` already waited.
    while not is_mounted(await read_mounts(mountinfo), mount_point, FUSE_RCLONE):  # noqa: ASYNC110
        await trio.sleep(MOUNT_POLL_INTERVAL)


async def mount_answers(mount_point: Path) -> bool:
    """False when the FUSE daemon behind a listed mount is gone (stat fails: ENOTCONN)."""
    try:
        limiter = _health_check_limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(HEALTH_CHECK_THREADS)
        _health_check_limiter.set(limiter)
    # All of them stuck on hung mounts: waiting for one times out like a slow mount.
    with trio.move_on_after(HEALTH_CHECK_LIMIT):
        try:
            await trio.to_thread.run_sync(
                os.stat, mount_point, abandon_on_cancel=True, limiter=limiter
            )
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            logger.warning("mount %s does not answer: %s", mount_point, reason)
            return False
    return True  # answered, or busy: a slow mount is still a mount
