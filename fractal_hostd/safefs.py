"""Filesystem operations that never follow a link: the one way the service touches the files
it writes, reads or removes as root under FRACTAL_ROOT and FRACTAL_PRIVATE_DIR.

Why: $FRACTAL_ROOT is shared with the containers (contract §3). A container that plants a
symlink at a name the service is about to write, read, remove or mount on could make root
overwrite, leak or delete any file of the host. Path-based calls (`open(path)`, `rmtree`,
`os.replace`) resolve every component at the moment of the call, so a check before them is
a race. Here every operation starts from a directory file descriptor and names one component:

- the *trusted root* (the operator's configured FRACTAL_ROOT or FRACTAL_PRIVATE_DIR) is opened
  by path, links and all: it is configuration, not container input;
- every component below it is opened with O_NOFOLLOW | O_DIRECTORY, relative to its parent's
  fd, so none can be a link, whatever changes between two calls;
- a file is written to a fresh temporary name (random, O_CREAT | O_EXCL, so a planted entry
  at that name makes the open fail instead of being followed), fsynced, renamed over the
  target (rename replaces a link, it does not follow it), then the directory is fsynced;
  the temporary file is removed on any failure;
- a file is read with O_NOFOLLOW | O_NONBLOCK (a planted FIFO cannot block us) and a size cap;
- a tree is removed by walking fds, never descending through a link or into another mount.

Everything here is plain blocking code with small functions; async callers decide whether a
call is worth a worker thread (fsync is: see docs/containers.md).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_SUFFIX = ".tmp"


class UnexpectedEntry(OSError):
    """A name holds something the service did not put there (a link, or a file where a
    directory belongs, or the other way round). An OSError, so callers that survive I/O
    errors survive this too."""

    def __init__(self, name: str, what: str) -> None:
        super().__init__(errno.ELOOP, f"{name!r} is {what}")
        self.name = name


class FileTooLarge(OSError):
    def __init__(self, name: str, limit: int) -> None:
        super().__init__(errno.EFBIG, f"{name!r} is larger than {limit} bytes")


def open_root(path: Path, *, create: bool = False, mode: int = 0o755) -> int:
    """The fd of a trusted root directory (configuration: links in it are followed).
    `create` makes it and missing ancestors, each new one with `mode` whatever the umask."""
    if create:
        _make_trusted_dirs(path, mode)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _make_trusted_dirs(path: Path, mode: int) -> None:
    if path.is_dir():
        return
    _make_trusted_dirs(path.parent, mode)
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        return
    os.chmod(path, mode)


def open_subdir(
    parent_fd: int, name: str, *, create: bool = False, mode: int = 0o755, sync_parent: bool = True
) -> int:
    """The fd of directory `name` in `parent_fd`, never through a link.

    Without `create`, a missing directory raises FileNotFoundError and a link or non-directory
    raises UnexpectedEntry. With `create`, a missing one is made (`mode`, whatever the umask)
    and an unexpected entry is logged, removed (never followed) and replaced by a directory;
    the parent is fsynced then, unless `sync_parent` is False (the caller fsyncs it later,
    before relying on the new entry). An existing directory keeps its mode (the caller may
    `fchmod` it)."""
    _check_name(name)
    for _ in range(3):  # a container racing us can only make us retry, a bounded number of times
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if not create:
                raise UnexpectedEntry(name, "not a directory (or a link)") from None
            logger.warning("replacing %r: a link or file where a directory belongs", name)
            remove_tree(parent_fd, name)
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
        except FileExistsError:
            continue
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(fd, mode)  # mkdir's mode is filtered by the umask
        if sync_parent:
            fsync_fd(parent_fd)
        return fd
    raise UnexpectedEntry(name, "replaced again and again while being made a directory")


def open_path(root: Path, parts: Sequence[str], *, create: bool = False, mode: int = 0o755) -> int:
    """The fd of `root/parts[0]/parts[1]/...`: `root` trusted, every part opened with
    `open_subdir` (same `create`/`mode` rules), component by component."""
    fd = open_root(root, create=create, mode=mode)
    for name in parts:
        try:
            child = open_subdir(fd, name, create=create, mode=mode)
        finally:
            os.close(fd)
        fd = child
    return fd


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    """Close `fd` on the way out: `with opened(open_path(...)) as fd:`."""
    try:
        yield fd
    finally:
        os.close(fd)


def verify_link_free(root: Path, parts: Sequence[str]) -> None:
    """Raise UnexpectedEntry when any of `parts` below the trusted `root` is a link or not a
    directory, FileNotFoundError when one is missing. For paths handed to other programs
    (mount points): they resolve the path themselves, so check it just before."""
    os.close(open_path(root, parts))


def write_file(
    dir_fd: int, name: str, data: bytes, *, mode: int = 0o644, sync_dir: bool = True
) -> None:
    """Replace `name` in `dir_fd` atomically with `data` (mode `mode`, whatever the umask):
    temporary file, fsync, rename, fsync of the directory (unless `sync_dir` is False: the
    caller writing several files fsyncs the directory once after the last). A link at `name`
    is replaced, never followed; a directory at `name` is removed first."""
    _check_name(name)
    tmp = f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    fd = os.open(tmp, _TEMP_FLAGS, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # open's mode is filtered by the umask
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _rename_over(dir_fd, tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if sync_dir:
        fsync_fd(dir_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _rename_over(dir_fd: int, tmp: str, name: str) -> None:
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise
        logger.warning("replacing %r: a directory where a file belongs", name)
        remove_tree(dir_fd, name)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_file(dir_fd: int, name: str, *, max_bytes: int) -> bytes | None:
    """Contents of regular file `name` in `dir_fd`; None when it does not exist. Raises
    UnexpectedEntry for a link or non-regular file, FileTooLarge beyond `max_bytes`."""
    _check_name(name)
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnexpectedEntry(name, "a link") from None
        raise
    with opened(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnexpectedEntry(name, "not a regular file")
        data = os.read(fd, max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLarge(name, max_bytes)
    return data


def remove_file(dir_fd: int, name: str) -> bool:
    """Unlink `name` (a link is unlinked, not followed); False when it was not there."""
    _check_name(name)
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        remove_tree(dir_fd, name)
    return True


def remove_tree(parent_fd: int, name: str) -> bool:
    """Remove `name` from `parent_fd` and everything below it, never following a link (a link,
    at the top too, is unlinked itself) and never crossing into another mount (raises
    UnexpectedEntry instead: a recursive delete must not go through a FUSE mount). False when
    there was nothing."""
    _check_name(name)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)
        return True
    with opened(fd):
        if os.fstat(fd).st_dev != os.fstat(parent_fd).st_dev:
            raise UnexpectedEntry(name, "a mount point")
        _remove_contents(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=parent_fd)
    return True


def _remove_contents(dir_fd: int) -> None:
    for name in os.listdir(dir_fd):
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        except (IsADirectoryError, PermissionError):
            # unlink of a directory is EISDIR on Linux (EPERM by POSIX): descend, by fd.
            remove_tree(dir_fd, name)


def list_entries(dir_fd: int) -> list[tuple[str, str]]:
    """(name, kind) of every entry, kind one of "dir", "file", "link", "other", from lstat."""
    entries: list[tuple[str, str]] = []
    for name in sorted(os.listdir(dir_fd)):
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            continue
        entries.append((name, _kind(mode)))
    return entries


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def fsync_fd(fd: int) -> None:
    os.fsync(fd)


def probe_writable(root: Path, parts: Sequence[str] = ()) -> None:
    """Create (and fsync, then remove) an empty temporary file in `root/parts...`, making the
    directories as needed: raises the OSError that makes the place unwritable. Empty, so a
    full disk alone does not fail it (writes then wait for space, retried)."""
    with opened(open_path(root, parts, create=True)) as dir_fd:
        tmp = f".probe.{secrets.token_hex(6)}{TEMP_SUFFIX}"
        fd = os.open(tmp, _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)


def _check_name(name: str) -> None:
    # One component, always: a "/" or ".." would walk somewhere the caller never checked.
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a single path component: {name!r}")
