"""A recording fake of `rclone`, `fusermount3`, `fusermount` and `umount` for cloud-storage tests.

Run as `python fake_rclone.py <control.json> <role> [args...]` (tests/cloud_storage_fixtures.py
writes one small shell wrapper per role that does this). control.json:

    {"log": "<calls.jsonl>", "mountinfo": "<fake mountinfo file>",
     "roles": {"rclone": {"exit": 0, "stderr": "", "sleep": 0, "mount": true,
                          "ignore_sigterm": false}, ...}}

Every call appends one JSON line to the log: role, argv, environment, and for `rclone` the
mode and text of the `--config` file as it was when rclone ran. A successful `rclone mount`
with "mount" true adds a `fuse.rclone` line for its mount point to the fake mountinfo (what
the real daemon's mount does to /proc/self/mountinfo); a successful unmount removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def escape(path: str) -> str:
    return path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011")


def config_snapshot(argv: list[str]) -> dict[str, object] | None:
    if "--config" not in argv:
        return None
    path = Path(argv[argv.index("--config") + 1])
    try:
        info = path.stat()
        return {"mode": stat.S_IMODE(info.st_mode), "text": path.read_text()}
    except OSError as exc:
        return {"error": exc.strerror}


def write_atomically(path: Path, text: str) -> None:
    """The service may read the fake mountinfo at any moment: never let it see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def exclusive(mountinfo: Path) -> Iterator[None]:
    """Tools run side by side (unmount_all): no read-modify-write may lose another's change,
    as the kernel's own mount table never does."""
    with open(mountinfo.with_name(mountinfo.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def add_mount(mountinfo: Path, mount_point: str, source: str) -> None:
    with exclusive(mountinfo):
        lines = mountinfo.read_text().splitlines()
        number = 1000 + len(lines)
        lines.append(
            f"{number} 27 0:{number} / {escape(mount_point)} rw,nosuid,nodev,relatime "
            f"- fuse.rclone {source} rw,user_id=0,group_id=0,allow_other"
        )
        write_atomically(mountinfo, "\n".join(lines) + "\n")


def remove_mount(mountinfo: Path, mount_point: str) -> bool:
    with exclusive(mountinfo):
        lines = mountinfo.read_text().splitlines()
        kept = [line for line in lines if line.split(" ")[4:5] != [escape(mount_point)]]
        write_atomically(mountinfo, "".join(line + "\n" for line in kept))
        return len(kept) != len(lines)


def main() -> int:
    control_path, role, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    control = json.loads(control_path.read_text())
    behaviour = control["roles"].get(role, {})
    record = {
        "role": role,
        "argv": args,
        "env": dict(os.environ),
        "config": config_snapshot(args) if role == "rclone" else None,
    }
    if behaviour.get("ignore_sigterm"):  # a tool stuck on a hung mount
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(control["log"], "a") as log:
        log.write(json.dumps(record) + "\n")
    time.sleep(behaviour.get("sleep", 0))
    sys.stderr.write(behaviour.get("stderr", ""))
    code = int(behaviour.get("exit", 0))
    if code != 0:
        return code
    mountinfo = Path(control["mountinfo"])
    if role == "rclone" and args[:1] == ["version"]:
        print("rclone v1.60.1-fake\n- os/type: linux")
    elif role == "rclone" and args[:1] == ["mount"] and behaviour.get("mount", True):
        add_mount(mountinfo, args[2], args[1])
    elif role in ("fusermount3", "fusermount", "umount") and not remove_mount(mountinfo, args[-1]):
        sys.stderr.write(f"{role}: entry for {args[-1]} not found\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
