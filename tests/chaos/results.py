"""Merge the `--json` summaries of several chaos runs (shards) into bench/results/chaos.json.

    python -m tests.chaos.results bench/results/chaos.json RUN.json... --note "how they ran"

Totals are sums over the shards; convergence figures stay per shard and fault kind (the
shards' raw times are not kept), with the overall maximum.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    by_engine: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        engine = by_engine.setdefault(
            summary["engine"],
            {
                "lifecycles": 0,
                "faults": 0,
                "operations": 0,
                "steps": 0,
                "violations": [],
                "faults_by_kind": Counter(),
                "convergence_max_s": 0.0,
                "shards": [],
            },
        )
        for key in ("lifecycles", "faults", "operations", "steps"):
            engine[key] += summary[key]
        engine["faults_by_kind"].update(summary["faults_by_kind"])
        engine["convergence_max_s"] = max(
            engine["convergence_max_s"], summary["convergence_s"].get("max", 0.0)
        )
        if summary["violation"]:
            engine["violations"].append(f"seed {summary['seed']}: {summary['violation']}")
        engine["shards"].append(summary)
    for engine in by_engine.values():
        engine["faults_by_kind"] = dict(sorted(engine["faults_by_kind"].items()))
    return by_engine


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.results")
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    summaries = [s for path in args.runs for s in json.loads(path.read_text())]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    document = {
        "what": "chaos driver long runs (tests/chaos, docs/chaos.md)",
        "commit": commit,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "note": args.note,
        "engines": merge(summaries),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
