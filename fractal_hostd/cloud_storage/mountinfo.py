"""Which filesystems are mounted where: a parser for /proc/self/mountinfo.

mountinfo is the kernel's own, unambiguous list (one line per mount, fields separated by
single spaces, spaces inside paths escaped as octal `\\040`), unlike `mount(8)` output.
The cloud-storage code reads it to learn whether a FUSE mount is live at a path, so that
"mounted" always means "the kernel says so", not "we remember starting rclone".

Line format (proc(5)):
    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    id parent major:minor root mount_point options [optional...] - fstype source super_options
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import trio

PROC_MOUNTINFO = Path("/proc/self/mountinfo")

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    mount_point: Path
    fs_type: str  # e.g. "fuse.rclone", "ext4"
    source: str  # e.g. "google_drive-32768:" for rclone


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (space, tab, newline and backslash)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """All well-formed lines of a mountinfo text; malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            mount_point, fs_type, source = fields[4], fields[separator + 1], fields[separator + 2]
        except (ValueError, IndexError):
            continue
        entries.append(
            MountEntry(
                mount_point=Path(unescape(mount_point)), fs_type=fs_type, source=unescape(source)
            )
        )
    return entries


async def read_mounts(path: Path = PROC_MOUNTINFO) -> list[MountEntry]:
    return parse_mountinfo(await trio.Path(path).read_text(encoding="utf-8", errors="replace"))


def mounts_under(entries: list[MountEntry], directory: Path) -> list[MountEntry]:
    """Entries mounted strictly below `directory`, deepest first (the order to unmount in)."""
    inside = [entry for entry in entries if directory in entry.mount_point.parents]
    return sorted(inside, key=lambda entry: len(entry.mount_point.parts), reverse=True)


def is_mounted(entries: list[MountEntry], mount_point: Path, fs_type: str | None = None) -> bool:
    return any(
        entry.mount_point == mount_point and (fs_type is None or entry.fs_type == fs_type)
        for entry in entries
    )
