"""Real mounts for the state tests (root only; skipped elsewhere): a full tmpfs and a
read-only bind at FRACTAL_ROOT."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*args: str) -> bool:
    done = subprocess.run(["mount", *args], capture_output=True, check=False, timeout=10)
    return done.returncode == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fractal"
    path.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=10)


@pytest.fixture
def read_only_root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "fractal"
    path.mkdir()
    if os.geteuid() != 0 or not _mount("--bind", str(path), str(path)):
        pytest.skip("bind mounts are not permitted here")
    try:
        if not _mount("-o", "remount,bind,ro", str(path)):
            pytest.skip("read-only remounts are not permitted here")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, timeout=10)
