"""The API's shared secret: the webserver's, or in localdev one generated and kept on disk."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from fractal_hostd.process.private_files import read_private_file, write_private_file

logger = logging.getLogger(__name__)


def load_or_create_auth_secret(path: Path) -> str:
    """Localdev's API secret: reuse the one on disk, or make a new random one (0600).
    A link, oversized or unreadable file there is replaced by a new secret."""
    try:
        existing = (read_private_file(path) or "").strip()
    except OSError as exc:
        logger.warning("replacing %s: %s", path.name, exc.strerror)
        existing = ""
    if existing:
        return existing
    value = secrets.token_urlsafe(32)
    write_private_file(path, value)
    return value
