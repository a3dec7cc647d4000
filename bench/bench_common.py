"""What the benchmark scripts share: the header of a results file, and writing that file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def results_header(benchmark: str, **machine: str) -> dict[str, Any]:
    """The first keys of a results file: what ran, when, and on what machine (`machine` adds
    to cpus; the load average is read now, after the run, to show how busy it was)."""
    with open("/proc/loadavg") as loadavg:
        load = loadavg.read().split()[:3]
    return {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), **machine, "load_average_after": load},
    }


def write_results(path: Path, result: dict[str, Any]) -> None:
    """`result` as indented JSON at `path` (under bench/results/), and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path.relative_to(REPO)}")
