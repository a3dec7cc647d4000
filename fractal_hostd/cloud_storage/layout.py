"""Where cloud storage keeps things on disk, and the (blocking) removal of what it left.

    $root/cloudStorage/<host_port>/<Google Drive|Dropbox>   mount points (dirs 0755)
    <config_dir>/<host_port>-<provider>.conf               rclone config, 0600, dir 0700
    (rclone's VFS write caches: rclone_cache.py)

Removal under $root/cloudStorage is `rmdir` only, never recursive: a mount point that is
still (or again) a FUSE mount holds somebody's Drive, and a recursive delete would go
through it. The functions here block: callers run them in a worker thread.

Containers write into `cloudStorage/<host_port>/` (it is bind-mounted into them), so any name
below `$root` may be a symbolic link planted to make root create, mount on, unmount or remove
something elsewhere. Every such operation walks from `$root` one component at a time
(`open_dir_no_follow`) and acts relative to the verified parent's descriptor. The mount and
the unmount themselves are done by other programs (rclone, fusermount) given a path: they run
only right after that path was verified link-free. The window left between the check and
their own path walk is documented in docs/cloud-storage.md.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fractal_hostd import safefs
from fractal_hostd.cloud_storage.rclone_config import PROVIDERS, config_file_name

logger = logging.getLogger(__name__)

Key = tuple[int, str]  # (host_port, provider)


class UnsafePath(OSError):
    """A name on the way is a symbolic link or not a directory: nothing was done there."""


def open_dir_no_follow(root: Path, parts: Sequence[str], *, create: bool = False) -> int:
    """A descriptor of `root/parts[0]/.../parts[-1]`, reached without following any link.

    `root` itself is configuration and trusted; each part is opened by safefs relative to its
    parent's descriptor, and with `create` made (0755) when missing. Unlike the mapping
    directories (which safefs replaces), a link or file on the way is refused, not replaced:
    UnsafePath, so the mount is answered 406 and nothing runs there. The caller closes the
    descriptor."""
    fd = safefs.open_root(root, create=create)
    try:
        for index, part in enumerate(parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                next_fd = safefs.open_subdir(fd, part)
            except safefs.UnexpectedEntry:
                where = root.joinpath(*parts[: index + 1])
                raise UnsafePath(
                    errno.ELOOP, f"{where} is a symbolic link or not a directory"
                ) from None
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _opened(root: Path, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
    fd = open_dir_no_follow(root, parts, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


def _is_real_dir(parent_fd: int, name: str) -> bool | None:
    """From the parent's directory entry alone (readdir's type): never a stat, which on a
    hung FUSE mount point would not return. None when there is no such entry."""
    with os.scandir(parent_fd) as entries:
        for entry in entries:
            if entry.name == name:
                return entry.is_dir(follow_symlinks=False)
    return None


@dataclass(frozen=True)
class Layout:
    base: Path  # $root/cloudStorage
    config_dir: Path

    @property
    def root(self) -> Path:
        return self.base.parent

    def _parts(self, path: Path) -> tuple[str, ...]:
        """`path`'s names below the root; ValueError for a path outside it."""
        return path.relative_to(self.root).parts

    def make_mount_point(self, key: Key) -> None:
        """Creates (0755) what is missing of the mount point's path, never through a link."""
        *parents, folder = self._parts(self.mount_point(key))
        with _opened(self.root, parents, create=True) as parent_fd:
            with contextlib.suppress(FileExistsError):  # a mount point in use is fine too
                os.mkdir(folder, 0o755, dir_fd=parent_fd)
            if not _is_real_dir(parent_fd, folder):
                raise UnsafePath(
                    errno.ENOTDIR, f"{self.mount_point(key)} is a symbolic link or not a directory"
                )

    def is_link_free(self, mount_point: Path) -> bool:
        """Whether `mount_point`, a directory below the root, is reached without any link:
        only then may an unmount tool be given its path."""
        try:
            *parents, name = self._parts(mount_point)
            with _opened(self.root, parents) as parent_fd:
                return _is_real_dir(parent_fd, name) is True
        except (OSError, ValueError):
            return False

    def rmdir_if_empty(self, directory: Path) -> None:
        """rmdir relative to the link-free parent: a link is never followed (rmdir of a link
        itself fails with ENOTDIR); a non-empty directory or a live mount point stays."""
        try:
            *parents, name = self._parts(directory)
            with _opened(self.root, parents) as parent_fd:
                os.rmdir(name, dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.debug("kept %s: %s", directory, exc.strerror)

    def subdirs(self, directory: Path) -> list[Path]:
        """Subdirectories (links are not), from readdir's type field alone: no stat that a
        dead mount would fail; reached without following a link."""
        try:
            with _opened(self.root, self._parts(directory)) as fd, os.scandir(fd) as entries:
                return [directory / e.name for e in entries if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    def port_dir(self, host_port: int) -> Path:
        return self.base / str(host_port)

    def mount_point(self, key: Key) -> Path:
        return self.port_dir(key[0]) / PROVIDERS[key[1]].folder

    def config_path(self, key: Key) -> Path:
        return self.config_dir / config_file_name(*key)

    def remove_key_files(self, key: Key) -> None:
        """Config (and rclone's own save files) and the mount dirs if empty."""
        name = config_file_name(*key)
        if self.config_dir.is_dir():
            # rclone saves refreshed tokens through `<name><random>` and `<name>.old`.
            for path in self.config_dir.glob(f"{name}*"):
                path.unlink(missing_ok=True)
            self.config_dir.joinpath(f".{name}.tmp").unlink(missing_ok=True)
        self.rmdir_if_empty(self.mount_point(key))
        self.rmdir_if_empty(self.port_dir(key[0]))

    def remove_empty_dirs(self, directory: Path, keep: Collection[Path]) -> None:
        """Empty mount dirs below `directory` (the base or one port dir), except `keep`."""
        port_dirs = self.subdirs(directory) if directory == self.base else [directory]
        for port_dir in port_dirs:
            for folder in self.subdirs(port_dir):
                if folder not in keep:
                    self.rmdir_if_empty(folder)
            self.rmdir_if_empty(port_dir)

    def remove_stale_files(self, keep: Collection[Key]) -> None:
        """Everything in config_dir that belongs to no key in `keep`."""
        if not self.config_dir.is_dir():
            return
        stems = {_stem(key) for key in keep}
        for path in self.config_dir.iterdir():
            if path.is_dir():  # not ours: config files only (caches live elsewhere)
                continue
            if not any(path.name.lstrip(".").startswith(stem + ".") for stem in stems):
                path.unlink(missing_ok=True)


def _stem(key: Key) -> str:
    return config_file_name(*key).removesuffix(".conf")
