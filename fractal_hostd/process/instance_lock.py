"""One instance per host (contract §7a): an exclusive flock taken before any side effect.

Which instances exclude each other: two that share FRACTAL_ROOT, or FRACTAL_PRIVATE_DIR, or
both. The API port plays no part: two instances on different ports would still hand out the
same TTYs, write the same mapping files and delete each other's TLS key. So the service takes
one lock per directory, and a second instance is refused when either is held.

Where the lock files live: in a fixed runtime directory (`/run/fractal-hostd` for root), named
after a hash of the directory's resolved path. Not inside the directories themselves:
- creating them would be a side effect of the refused instance (and FRACTAL_ROOT is shared with
  containers, whose content is untrusted);
- FRACTAL_PRIVATE_DIR is removed at shutdown: a lock file in it, unlinked while held, would let
  a third instance lock a fresh file of the same name while the first still runs.
The lock files are never removed for the same reason; they are a few bytes in a tmpfs.

A lock file holds the pid of its holder, written after the lock is taken, so the refused
instance can name the running one. flock locks belong to the open file description: they go
with the process (kill -9 included), and the descriptor is close-on-exec, so a child such as
rclone never inherits (and never prolongs) the lock.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT_LOCK_DIR = Path("/run/fractal-hostd")
_LOCK_ATTEMPTS = 5
_LOCK_RETRY_PAUSE = 0.025


class InstanceLocked(Exception):
    """Another instance holds the lock; the message is one line naming its pid."""


class LockUnavailable(Exception):
    """The lock cannot be taken at all (runtime directory unusable); one line."""


def default_lock_dir(euid: int | None = None) -> Path:
    """`/run/fractal-hostd` for root; a per-user runtime directory otherwise (localdev)."""
    euid = os.geteuid() if euid is None else euid
    if euid == 0:
        return ROOT_LOCK_DIR
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return Path(runtime) / "fractal-hostd"
    return Path(f"/tmp/fractal-hostd-{euid}")  # noqa: S108 (checked: ours, 0700, no link)


def lock_name(what: str, directory: Path) -> str:
    """`root-<hash>.lock`: one name per resolved directory, whatever spelling was configured."""
    resolved = os.path.realpath(directory)
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:24]
    return f"{what}-{digest}.lock"


@dataclass(frozen=True)
class _Target:
    variable: str  # what the operator configured, for the message
    directory: Path
    name: str


class InstanceLock:
    """Holds the locks for the life of the process (or until `release`)."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def acquire(root: Path, private_dir: Path, *, lock_dir: Path | None = None) -> InstanceLock:
    """Take both locks, or raise InstanceLocked / LockUnavailable having touched nothing else."""
    lock_dir = default_lock_dir() if lock_dir is None else lock_dir
    targets = _targets(root, private_dir)
    directory_fd = _open_lock_dir(lock_dir)
    fds: list[int] = []
    try:
        for target in targets:
            fd = _open_lock_file(directory_fd, target.name)
            fds.append(fd)
            if not _try_lock(fd):
                pid = _read_pid(fd)
                holder = f"pid {pid}" if pid else "pid unknown"
                raise InstanceLocked(
                    f"another fractal-hostd instance ({holder}) is running for "
                    f"{target.variable}={target.directory}; refusing to start"
                ) from None
        for fd in fds:
            _write_pid(fd, os.getpid())
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(directory_fd)
    return InstanceLock(fds)


def running_pid(root: Path, private_dir: Path, *, lock_dir: Path | None = None) -> int | None:
    """The pid of a running instance for these directories, or None (for `check`).

    Probes with a non-blocking lock taken and dropped at once; creates nothing.
    """
    lock_dir = default_lock_dir() if lock_dir is None else lock_dir
    for target in _targets(root, private_dir):
        try:
            fd = os.open(
                lock_dir / target.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
            )
        except OSError:
            continue  # never locked since boot (or unreadable: not ours to judge)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_pid(fd) or -1
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return None


def _targets(root: Path, private_dir: Path) -> Iterable[_Target]:
    return (
        _Target("FRACTAL_ROOT", root, lock_name("root", root)),
        _Target("FRACTAL_PRIVATE_DIR", private_dir, lock_name("private", private_dir)),
    )


def _open_lock_dir(lock_dir: Path) -> int:
    """The runtime directory, made 0700 if missing; refused when it is a link or not ours."""
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        # O_NOFOLLOW with O_DIRECTORY fails with ENOTDIR on a link, ELOOP without it.
        link = exc.errno in (errno.ELOOP, errno.ENOTDIR) and lock_dir.is_symlink()
        reason = "it is a symbolic link" if link else exc.strerror
        raise LockUnavailable(f"cannot use the lock directory {lock_dir}: {reason}") from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise LockUnavailable(
            f"cannot use the lock directory {lock_dir}: not owned by uid {os.geteuid()} "
            "or writable by others"
        )
    return fd


def _open_lock_file(directory_fd: int, name: str) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        return os.open(name, flags, 0o600, dir_fd=directory_fd)
    except OSError as exc:
        raise LockUnavailable(f"cannot open the lock file {name}: {exc.strerror}") from None


def _try_lock(fd: int) -> bool:
    """LOCK_EX without blocking, tried a few times over 0.1 s: `check` probes with a shared
    lock held for microseconds, which must not make a starting instance refuse to run."""
    for attempt in range(_LOCK_ATTEMPTS):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt + 1 < _LOCK_ATTEMPTS:
                time.sleep(_LOCK_RETRY_PAUSE)
            continue
        return True
    return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _write_pid(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)
