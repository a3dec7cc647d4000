"""Lazy unmounting of FUSE mounts with the tools the host has.

Lazy (`-z` / `-l`) because the container that used the mount may still hold files open
in it while it dies: a lazy unmount detaches the mount point at once (so its directory can
be removed) and the kernel finishes when the last user lets go; the rclone daemon then
exits by itself. `fusermount3` (fuse3) is tried first, then `fusermount` (fuse 2), then
`umount -l` (works for root without either).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import trio

from fractal_hostd.process.child_process import run_child

logger = logging.getLogger(__name__)

DEFAULT_UNMOUNT_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("fusermount3", "-u", "-z"),
    ("fusermount", "-u", "-z"),
    ("umount", "-l"),
)


async def lazy_unmount(
    mount_point: Path, commands: Sequence[Sequence[str]], *, per_command_limit: float
) -> bool:
    """True once one command succeeded; False (errors logged) when all failed. Never raises
    except Cancelled.

    Each command gets its own time limit so that one hung tool leaves the fallbacks their
    chance; the caller still bounds the whole with its cancel scope. A tool over its limit is
    killed, not waited for (`run_child`): a tool stuck on a hung mount may ignore SIGTERM.
    """
    failures = []
    for command in commands:
        argv = [*command, str(mount_point)]
        try:
            with trio.move_on_after(per_command_limit) as scope:
                result = await run_child(argv)
        except OSError as exc:  # tool not installed or not executable
            failures.append(f"{command[0]}: {exc.strerror}")
            continue
        if scope.cancelled_caught:
            failures.append(f"{command[0]}: no answer within {per_command_limit:g} s")
            continue
        if result.returncode == 0:
            return True
        output = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        failures.append(f"{command[0]}: {output}")
    logger.error(
        "could not unmount %s: %s",
        mount_point,
        "; ".join(failures),
        extra={"mount_point": str(mount_point)},
    )
    return False
