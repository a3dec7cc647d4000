"""Host prerequisites of cloud storage, for `fractal-hostd check` (synchronous, CLI only).

Each check answers (name, usable, detail). The service runs without cloud storage when one
fails (mounts then answer 406), so the CLI shows these as warnings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from fractal_hostd.process.child_process import child_environment

VERSION_TIMEOUT = 10.0

Check = tuple[str, bool, str]


def check_prerequisites(
    *,
    rclone: str = "rclone",
    fusermount: Sequence[str] = ("fusermount3", "fusermount"),
    fuse_device: Path = Path("/dev/fuse"),
    fuse_conf: Path = Path("/etc/fuse.conf"),
    euid: int | None = None,
) -> list[Check]:
    return [
        check_rclone(rclone),
        check_fusermount(fusermount),
        check_fuse_device(fuse_device),
        check_allow_other(os.geteuid() if euid is None else euid, fuse_conf),
    ]


def check_rclone(rclone: str) -> Check:
    path = shutil.which(rclone)
    if path is None:
        return ("rclone", False, f"{rclone} not found (Debian: apt-get install rclone)")
    try:
        result = subprocess.run(
            [path, "version"],
            capture_output=True,
            timeout=VERSION_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            env=child_environment(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return ("rclone", False, f"{path} version failed: {exc}")
    first_line = result.stdout.decode(errors="replace").strip().splitlines()[:1]
    if result.returncode != 0 or not first_line:
        return ("rclone", False, f"{path} version failed (exit {result.returncode})")
    return ("rclone", True, f"{first_line[0]} at {path}")


def check_fusermount(candidates: Sequence[str]) -> Check:
    for name in candidates:
        path = shutil.which(name)
        if path is not None:
            return ("fusermount", True, path)
    return ("fusermount", False, f"none of {', '.join(candidates)} found (Debian: fuse3)")


def check_fuse_device(device: Path) -> Check:
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        return ("/dev/fuse", False, f"cannot open {device}: {exc.strerror}")
    os.close(fd)
    return ("/dev/fuse", True, f"{device} opens read-write")


def check_allow_other(euid: int, fuse_conf: Path) -> Check:
    """`--allow-other` lets the container's user into a mount root made: root needs nothing,
    anyone else needs `user_allow_other` in /etc/fuse.conf."""
    if euid == 0:
        return ("allow_other", True, "running as root: user_allow_other is not needed")
    try:
        lines = fuse_conf.read_text().splitlines()
    except OSError as exc:
        return ("allow_other", False, f"not root and cannot read {fuse_conf}: {exc.strerror}")
    if any(line.strip() == "user_allow_other" for line in lines):
        return ("allow_other", True, f"user_allow_other set in {fuse_conf}")
    return ("allow_other", False, f"not root and user_allow_other missing from {fuse_conf}")
