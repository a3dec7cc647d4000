"""The private directory and the small files the service keeps there, never through a link.

The private directory holds the TLS key, rclone configs and, in localdev, the generated API
secret. It is made 0700 and re-chmodded if it already exists with looser bits: the key inside
must never be readable by another user, even for a moment.
"""

from __future__ import annotations

import os
from pathlib import Path

from fractal_hostd import safefs

MAX_SECRET_FILE_BYTES = 4096  # a secret file bigger than this is not one of ours


def ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private_file(path: Path, content: str) -> None:
    """Write `content` to a 0600 file atomically (never a moment with wider permissions),
    never through a link at `path` or at the temporary name (see safefs). `path.parent` is
    the trusted directory (the private directory or one the service made in it)."""
    with safefs.opened(safefs.open_root(path.parent)) as dir_fd:
        safefs.write_file(dir_fd, path.name, content.encode(), mode=0o600)


def read_private_file(path: Path) -> str | None:
    """The text of a small file in a trusted directory, never through a link; None when
    missing. Raises OSError (safefs.UnexpectedEntry for a link) when it cannot be trusted."""
    with safefs.opened(safefs.open_root(path.parent)) as dir_fd:
        data = safefs.read_file(dir_fd, path.name, max_bytes=MAX_SECRET_FILE_BYTES)
    return None if data is None else data.decode(errors="replace")
