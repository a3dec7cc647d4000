"""The private directory and the API's shared secret on disk.

The private directory holds the TLS key and, in localdev, the generated API secret. It is made
0700 and re-chmodded if it already exists with looser bits: the key inside must never be
readable by another user, even for a moment.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def ensure_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private_file(path: Path, content: str) -> None:
    """Write `content` to a new 0600 file atomically (never a moment with wider permissions)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_auth_secret(path: Path) -> str:
    """Localdev's API secret: reuse the one on disk, or make a new random one (0600)."""
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    value = secrets.token_urlsafe(32)
    write_private_file(path, value)
    return value
