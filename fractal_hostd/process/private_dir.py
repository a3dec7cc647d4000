"""FRACTAL_PRIVATE_DIR at shutdown: remove what the service put there, and only that (§7a).

The service used to `rmtree` the whole directory. A mistyped FRACTAL_PRIVATE_DIR (`/var/lib`)
would then have been deleted by root. Two guards now:
- configuration refuses `/` and system directories (`config.check_private_dir`, exit 2);
- at shutdown only the service's own entries are removed, by name: the TLS pair, the localdev
  API secret, the API URL file, the rclone config directory, and the temporary files of atomic
  writes of those (`.<name>.*`). Anything else found there stays. The directory itself is
  removed only when that leaves it empty.

"Created by the service" is decided by name, not by a list kept during this run: a previous run
killed with -9 leaves its TLS key behind, and that key must go at the next clean stop too.
Removal never follows a symbolic link: entries are unlinked relative to a descriptor of the
directory opened with O_NOFOLLOW, and `shutil.rmtree(dir_fd=)` is link-safe.

Blocking file-system work: callers run `remove_own` in a worker thread they can abandon.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)


def is_own(name: str, own: Iterable[str]) -> bool:
    """One of `own`, or the temporary file of an atomic write of one (`.key.pem.1a2b.tmp`)."""
    return any(name == entry or name.startswith(f".{entry}.") for entry in own)


def remove_own(path: Path, own: Iterable[str]) -> list[str]:
    """Remove the entries of `path` named in `own` (and their temporaries); returns what stays.

    The directory itself goes when it is left empty. Never raises: a shutdown step.
    """
    own = tuple(own)
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.error("cannot open the private directory %s: %s", path, exc.strerror)
        return []
    kept: list[str] = []
    try:
        for name in sorted(os.listdir(dir_fd)):
            if not is_own(name, own):
                kept.append(name)
                continue
            try:
                _remove_entry(dir_fd, name)
            except OSError as exc:
                logger.error("cannot remove %s from the private directory: %s", name, exc)
                kept.append(name)
    finally:
        os.close(dir_fd)
    if kept:
        logger.warning(
            "private directory %s kept: it holds entries the service did not create (%d)",
            path,
            len(kept),
        )
        return kept
    with contextlib.suppress(OSError):  # re-filled meanwhile, or already gone
        path.rmdir()
    return kept


def _remove_entry(dir_fd: int, name: str) -> None:
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
        return
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
