"""Memory figures from /proc/meminfo, as the heartbeat reports them (kB, integers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_MEMINFO = Path("/proc/meminfo")
_FIELDS = {"MemTotal": "total_kb", "MemFree": "free_kb", "MemAvailable": "available_kb"}


@dataclass(frozen=True)
class MemInfo:
    total_kb: int
    free_kb: int
    available_kb: int


def parse_meminfo(text: str) -> MemInfo:
    """Parse lines like `MemTotal:       16314240 kB`; raises ValueError naming what is missing."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep or key not in _FIELDS:
            continue
        parts = rest.split()
        if not parts or not parts[0].isdigit() or parts[1:] not in ([], ["kB"]):
            raise ValueError(f"unexpected /proc/meminfo line: {line!r}")
        values[_FIELDS[key]] = int(parts[0])
    missing = [key for key, field in _FIELDS.items() if field not in values]
    if missing:
        raise ValueError(f"/proc/meminfo lacks {', '.join(missing)}")
    return MemInfo(**values)


def read_meminfo(path: Path = PROC_MEMINFO) -> MemInfo:
    """Read and parse; /proc is in memory, so a plain read does not block the event loop."""
    return parse_meminfo(path.read_text(encoding="ascii"))
