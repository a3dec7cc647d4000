"""rclone's VFS write caches: where they live, what they still hold, when they go.

With `--vfs-cache-mode writes`, a file a user saved exists only in rclone's cache until it is
uploaded (after `--vfs-write-back`). rclone 1.60 does not upload pending files when its mount
goes away: they stay in the cache, and a later `rclone mount` with the same cache dir and
remote uploads them when it starts. So a cache with pending uploads is the user's data:

* it lives in a directory of its own (0700), not in the private dir, which the shutdown
  removes: a stop or a restart no longer deletes files saved seconds earlier;
* one cache per (host port, provider, container id): a new container on a reused port never
  sees, nor uploads to its own Drive, what the previous container left;
* it goes when its mount is gone for good: the container died (after the drain), or the port
  belongs to another container now (at that container's mount). A stop keeps the caches that
  still hold pending uploads, for the container's next mount after the restart; caches with
  nothing pending are removed at stop and at start.

The functions here block: callers run them in a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from fractal_hostd.process.private_files import ensure_private_dir

logger = logging.getLogger(__name__)

Key = tuple[int, str]  # (host_port, provider)


def default_cache_root(private_dir: Path) -> Path:
    """`<FRACTAL_PRIVATE_DIR>-rclone-cache` (/fractalprivate-rclone-cache by default): beside
    the private dir, on the same disk, out of reach of its removal at stop."""
    return private_dir.with_name(f"{private_dir.name}-rclone-cache")


@dataclass(frozen=True)
class RcloneCaches:
    root: Path  # e.g. /fractalprivate-rclone-cache (0700)

    def prepare(self) -> None:
        ensure_private_dir(self.root)

    def dir_for(self, key: Key, container_id: str) -> Path:
        return self.root / f"{key[0]}-{key[1]}-{container_id}"

    def dirs_of(self, key: Key) -> list[Path]:
        """The caches of this (host port, provider), whatever their container."""
        prefix = f"{key[0]}-{key[1]}-"
        return [path for path in self._all() if path.name.startswith(prefix)]

    def pending_uploads(self, cache_dir: Path) -> int:
        """Files rclone's VFS cache has yet to upload: their metadata says "Dirty": true.

        Relies on rclone's cache layout (`vfsMeta/<remote>/<path>`, one JSON object per
        file), the same since rclone 1.53.
        """
        count = 0
        for meta in (cache_dir / "vfsMeta").rglob("*"):
            try:
                dirty = meta.is_file() and json.loads(meta.read_text()).get("Dirty") is True
            except OSError:
                continue  # removed meanwhile: nothing left to upload
            except (ValueError, AttributeError):
                # rclone rewrites metadata in place: right after a close the file can be
                # empty or half written. Count it as pending; the next look sees it whole.
                dirty = True
            count += 1 if dirty else 0
        return count

    def remove(self, cache_dir: Path) -> None:
        """Removes one cache, logging what pending uploads it held (they are lost)."""
        pending = self.pending_uploads(cache_dir)
        if pending:
            logger.warning(
                "removing the cache of a gone mount with %d upload(s) never sent",
                pending,
                extra={"cache_dir": str(cache_dir)},
            )
        shutil.rmtree(cache_dir, ignore_errors=True)

    def remove_if_clean(self, cache_dir: Path) -> int:
        """Removes the cache when nothing is left to upload; else the pending count."""
        pending = self.pending_uploads(cache_dir)
        if not pending:
            shutil.rmtree(cache_dir, ignore_errors=True)
        return pending

    def remove_clean(self, keep: set[Path]) -> list[tuple[Path, int]]:
        """Removes every cache outside `keep` that has nothing left to upload; returns the
        others with their number of pending uploads (kept for the container's next mount)."""
        kept = []
        for cache_dir in self._all():
            if cache_dir not in keep and (pending := self.remove_if_clean(cache_dir)):
                kept.append((cache_dir, pending))
        return kept

    def _all(self) -> list[Path]:
        """The cache dirs (the root is root's alone, 0700: no link to fear in it)."""
        try:
            with os.scandir(self.root) as entries:
                return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []
