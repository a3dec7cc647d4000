"""The single-instance lock (contract §7a) in-process: which instances exclude which."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fractal_hostd.checks import check_instance
from fractal_hostd.config import Config
from fractal_hostd.process.instance_lock import (
    InstanceLocked,
    LockUnavailable,
    acquire,
    lock_name,
    running_pid,
)


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def test_second_acquire_is_refused_naming_the_pid(tmp_path: Path, lock_dir: Path) -> None:
    first = acquire(tmp_path / "root", tmp_path / "private", lock_dir=lock_dir)
    try:
        with pytest.raises(InstanceLocked) as refused:
            acquire(tmp_path / "root", tmp_path / "private", lock_dir=lock_dir)
        assert f"pid {os.getpid()}" in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        first.release()
    acquire(tmp_path / "root", tmp_path / "private", lock_dir=lock_dir).release()


@pytest.mark.parametrize("shared", ["root", "private"])
def test_sharing_either_directory_is_refused(tmp_path: Path, lock_dir: Path, shared: str) -> None:
    first = acquire(tmp_path / "root", tmp_path / "private", lock_dir=lock_dir)
    try:
        other_root = tmp_path / ("root" if shared == "root" else "root2")
        other_private = tmp_path / ("private" if shared == "private" else "private2")
        with pytest.raises(InstanceLocked) as refused:
            acquire(other_root, other_private, lock_dir=lock_dir)
        variable = "FRACTAL_ROOT" if shared == "root" else "FRACTAL_PRIVATE_DIR"
        assert variable in str(refused.value)
    finally:
        first.release()


def test_other_directories_run_side_by_side(tmp_path: Path, lock_dir: Path) -> None:
    first = acquire(tmp_path / "a", tmp_path / "pa", lock_dir=lock_dir)
    second = acquire(tmp_path / "b", tmp_path / "pb", lock_dir=lock_dir)
    first.release()
    second.release()


def test_spelling_of_a_path_does_not_matter(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert lock_name("root", tmp_path / "real") == lock_name("root", tmp_path / "link/")
    assert lock_name("root", tmp_path / "real") == lock_name("root", tmp_path / "real" / ".")


def test_refused_instance_creates_nothing_in_the_directories(
    tmp_path: Path, lock_dir: Path
) -> None:
    first = acquire(tmp_path / "root", tmp_path / "private", lock_dir=lock_dir)
    try:
        with pytest.raises(InstanceLocked):
            acquire(tmp_path / "root", tmp_path / "private", lock_dir=lock_dir)
    finally:
        first.release()
    assert not (tmp_path / "root").exists()
    assert not (tmp_path / "private").exists()


def test_lock_dir_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LockUnavailable, match="symbolic link"):
        acquire(tmp_path / "root", tmp_path / "private", lock_dir=tmp_path / "run")


def test_running_pid_and_check(tmp_path: Path, lock_dir: Path) -> None:
    config = Config(root=tmp_path / "root", private_dir=tmp_path / "private")
    assert running_pid(config.root, config.private_dir, lock_dir=lock_dir) is None
    assert check_instance(config, lock_dir).status == "ok"
    held = acquire(config.root, config.private_dir, lock_dir=lock_dir)
    try:
        assert running_pid(config.root, config.private_dir, lock_dir=lock_dir) == os.getpid()
        result = check_instance(config, lock_dir)
        assert result.status == "fail"
        assert f"pid {os.getpid()}" in result.detail
    finally:
        held.release()
    assert check_instance(config, lock_dir).status == "ok"


_HOLDER = """
import subprocess, sys, time
from pathlib import Path
from fractal_hostd.process.instance_lock import acquire
acquire(Path(sys.argv[1]), Path(sys.argv[2]), lock_dir=Path(sys.argv[3]))
subprocess.Popen(["sleep", "60"])  # a child, as rclone is: must not inherit the lock
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_goes_with_the_process_even_when_children_live_on(tmp_path: Path) -> None:
    """kill -9 frees it; a child (rclone) neither inherits nor prolongs it."""
    root, private, lock_dir = tmp_path / "root", tmp_path / "private", tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root), str(private), str(lock_dir)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        assert running_pid(root, private, lock_dir=lock_dir) == holder.pid
        with pytest.raises(InstanceLocked, match=f"pid {holder.pid}"):
            acquire(root, private, lock_dir=lock_dir)
        holder.kill()
        holder.wait(timeout=10)
        assert running_pid(root, private, lock_dir=lock_dir) is None
        acquire(root, private, lock_dir=lock_dir).release()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(holder.pid, signal.SIGKILL)  # the orphaned `sleep` too
        holder.wait(timeout=10)


def test_a_check_probing_meanwhile_does_not_refuse_a_start(tmp_path: Path, lock_dir: Path) -> None:
    root, private = tmp_path / "root", tmp_path / "private"
    acquire(root, private, lock_dir=lock_dir).release()
    probe = os.open(lock_dir / lock_name("root", root), os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)  # what `check` holds for an instant
    release = threading.Timer(0.03, os.close, args=(probe,))
    release.start()
    try:
        acquire(root, private, lock_dir=lock_dir).release()
    finally:
        release.join()
