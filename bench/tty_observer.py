"""The benchmarks' observer of `tty` files: what a container sees, timed from outside.

Run as its own process (`python bench/tty_observer.py MAPPINGS_DIR`), so the loop under
measurement never times itself: inotify watches the mappings directory; every new container
directory gets a watch of its own, and the moment a `tty` is renamed into it (IN_MOVED_TO: the
file is complete, as a container reading it finds it) one line `<id> <time_ns>` goes to stdout.
time_ns is CLOCK_REALTIME, the clock of a Docker event's timeNano.

A directory whose `tty` was already there when its watch was added (the watch came too late,
this process not being scheduled in time on a busy machine) is printed with the file's ctime,
which the rename set (the kernel's coarse clock: a tick, 1-4 ms, early), and a trailing
`late`; the caller counts those.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
import time

IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_CLOEXEC = 0o2000000
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


def main(mappings: str) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = libc.inotify_init1(IN_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    top = libc.inotify_add_watch(fd, mappings.encode(), IN_CREATE | IN_ONLYDIR)
    if top < 0:
        raise OSError(ctypes.get_errno(), f"inotify_add_watch {mappings}")
    print("ready", flush=True)
    names: dict[int, str] = {}  # watch -> container id
    while True:
        data = os.read(fd, 65536)
        now = time.time_ns()
        offset = 0
        lines: list[str] = []
        while offset < len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            name = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0")
            offset += _HEADER.size + length
            if wd == top and mask & IN_CREATE and mask & IN_ISDIR and len(name) == 64:
                directory = os.path.join(mappings, name.decode())
                watch = libc.inotify_add_watch(fd, directory.encode(), IN_MOVED_TO)
                if watch < 0:
                    continue  # already gone
                names[watch] = name.decode()
                try:
                    renamed = os.lstat(os.path.join(directory, "tty")).st_ctime_ns
                except FileNotFoundError:
                    continue
                lines.append(f"{name.decode()} {renamed} late")
            elif wd in names and mask & IN_MOVED_TO and name == b"tty":
                lines.append(f"{names[wd]} {now}")
        if lines:
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
