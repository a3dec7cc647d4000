"""`rclone` as the service sees it on PATH during a chaos run: succeeds, hangs or dies.

Run as `python chaos_rclone.py <control.json> [rclone args...]` by a wrapper script named
`rclone`. control.json: {"real": "/usr/bin/rclone", "backing": DIR,
"modes": {"<host port>": "ok" | "hang" | "die"}}.

- `version` and other non-mount calls go to the real rclone;
- `mount REMOTE: MOUNTPOINT ...` with mode "ok" runs the REAL `rclone mount` of a local
  directory (no internet here) with the service's own options, so the kernel shows a real
  `fuse.rclone` mount and a real daemon: leaks are real leaks;
- "hang" sleeps for an hour (the service's mount timeout must end it);
- "die" exits 1 at once with an rclone-like error.
The mount point is `$FRACTAL_ROOT/cloudStorage/<host port>/<provider>`: the host port picks
the mode, so concurrent mounts of different containers behave independently.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    control = json.loads(Path(sys.argv[1]).read_text())
    args = sys.argv[2:]
    real = control["real"]
    if args[:1] != ["mount"] or len(args) < 3:
        os.execv(real, [real, *args])
    mount_point = Path(args[2])
    port = mount_point.parent.name
    mode = control["modes"].get(port, "ok")
    if mode == "hang":
        time.sleep(3600)
        return 0
    if mode == "die":
        sys.stderr.write("Failed to create file system: chaos says no\n")
        return 1
    backing = Path(control["backing"]) / port / mount_point.name
    backing.mkdir(parents=True, exist_ok=True)
    os.execv(real, [real, "mount", str(backing), *args[2:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
