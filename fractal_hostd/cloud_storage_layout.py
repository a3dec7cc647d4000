"""Where cloud storage keeps things on disk, and the (blocking) removal of what it left.

    $root/cloudStorage/<host_port>/<Google Drive|Dropbox>   mount points (dirs 0755)
    <config_dir>/<host_port>-<provider>.conf               rclone config, 0600, dir 0700
    <config_dir>/cache/<host_port>-<provider>/             rclone's VFS write cache

Removal under $root/cloudStorage is `rmdir` only, never recursive: a mount point that is
still (or again) a FUSE mount holds somebody's Drive, and a recursive delete would go
through it. The functions here block: callers run them in a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from fractal_hostd.rclone_config import PROVIDERS, config_file_name

logger = logging.getLogger(__name__)

Key = tuple[int, str]  # (host_port, provider)


@dataclass(frozen=True)
class Layout:
    base: Path  # $root/cloudStorage
    config_dir: Path

    @property
    def cache_root(self) -> Path:
        return self.config_dir / "cache"

    def port_dir(self, host_port: int) -> Path:
        return self.base / str(host_port)

    def mount_point(self, key: Key) -> Path:
        return self.port_dir(key[0]) / PROVIDERS[key[1]].folder

    def config_path(self, key: Key) -> Path:
        return self.config_dir / config_file_name(*key)

    def cache_dir(self, key: Key) -> Path:
        return self.cache_root / _stem(key)

    def pending_uploads(self, key: Key) -> int:
        """Files rclone's VFS cache has yet to upload: their metadata says "Dirty": true.

        Relies on rclone's cache layout (`vfsMeta/<remote>/<path>`, one JSON object per
        file), the same since rclone 1.53.
        """
        count = 0
        for meta in (self.cache_dir(key) / "vfsMeta").rglob("*"):
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

    def remove_key_files(self, key: Key) -> None:
        """Config (and rclone's own save files), cache, and the mount dirs if empty."""
        name = config_file_name(*key)
        if self.config_dir.is_dir():
            # rclone saves refreshed tokens through `<name><random>` and `<name>.old`.
            for path in self.config_dir.glob(f"{name}*"):
                path.unlink(missing_ok=True)
            self.config_dir.joinpath(f".{name}.tmp").unlink(missing_ok=True)
        shutil.rmtree(self.cache_dir(key), ignore_errors=True)
        rmdir_if_empty(self.mount_point(key))
        rmdir_if_empty(self.port_dir(key[0]))

    def remove_empty_dirs(self, directory: Path, keep: Collection[Path]) -> None:
        """Empty mount dirs below `directory` (the base or one port dir), except `keep`."""
        port_dirs = subdirs(directory) if directory == self.base else [directory]
        for port_dir in port_dirs:
            for folder in subdirs(port_dir):
                if folder not in keep:
                    rmdir_if_empty(folder)
            rmdir_if_empty(port_dir)

    def remove_stale_files(self, keep: Collection[Key]) -> None:
        """Everything in config_dir that belongs to no key in `keep`."""
        if not self.config_dir.is_dir():
            return
        stems = {_stem(key) for key in keep}
        for path in self.config_dir.iterdir():
            if path == self.cache_root:
                for cache in subdirs(path):
                    if cache.name not in stems:
                        shutil.rmtree(cache, ignore_errors=True)
            elif not any(path.name.lstrip(".").startswith(stem + ".") for stem in stems):
                path.unlink(missing_ok=True)


def _stem(key: Key) -> str:
    return config_file_name(*key).removesuffix(".conf")


def subdirs(directory: Path) -> list[Path]:
    """Subdirectories, from readdir's type field alone: no stat that a dead mount would fail."""
    try:
        with os.scandir(directory) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def rmdir_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.debug("kept %s: %s", directory, exc.strerror)
