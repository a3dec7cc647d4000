"""Running `rclone mount --daemon` and asking the kernel whether its mount is there.

Timeouts belong to the caller: each function here runs until it is done or cancelled.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import trio

from fractal_hostd.mountinfo import is_mounted, read_mounts
from fractal_hostd.rclone_config import scrub

logger = logging.getLogger(__name__)

FUSE_RCLONE = "fuse.rclone"
MOUNT_POLL_INTERVAL = 0.05
HEALTH_CHECK_LIMIT = 2.0


async def run_mount_command(argv: list[str], secrets: list[str]) -> str | None:
    """None once `rclone mount --daemon` exited 0, else why not (scrubbed of `secrets`)."""
    # RCLONE_* variables of the service's own environment would override our config file.
    env = {name: value for name, value in os.environ.items() if not name.startswith("RCLONE_")}
    try:
        result = await trio.run_process(
            argv, stdin=b"", capture_stdout=True, capture_stderr=True, check=False, env=env
        )
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
    with trio.move_on_after(HEALTH_CHECK_LIMIT):
        try:
            await trio.to_thread.run_sync(os.stat, mount_point, abandon_on_cancel=True)
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            logger.warning("mount %s does not answer: %s", mount_point, reason)
            return False
    return True  # answered, or busy: a slow mount is still a mount
