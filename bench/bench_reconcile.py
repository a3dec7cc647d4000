"""How long one reconcile takes (list + inspect + hand the truth to the lifecycle).

The fake Docker engine runs in its own process (like dockerd) with N managed containers, all
already adopted. Measured in interleaved rounds:
- `steady`: the periodic reconcile as the event stream runs it (the listing agrees with what
  the lifecycle holds: one listing, no inspect);
- `confirm_all_B`: every container confirmed by an inspect (what a reconcile costs when all
  are new to it, and what every reconcile cost before), B inspects at a time (the default
  bound, and 1: the old way).
Numbers only, never asserted by tests.

    .venv/bin/python -m bench.bench_reconcile [CONTAINERS] [ROUNDS]

Prints JSON: median and p90 in milliseconds per bound, and writes it (with the machine's load
average) to bench/results/reconcile.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from bench.bench_common import REPO, results_header, write_results
from bench.bench_docker import fake_engine_process
from fractal_hostd.containers.lifecycle import ContainerLifecycle
from fractal_hostd.containers.registry import ContainerRegistry
from fractal_hostd.docker.client import DockerClient
from fractal_hostd.docker.events import INSPECT_CONCURRENCY, fetch_running


async def reconcile_once(
    client: DockerClient, lifecycle: ContainerLifecycle, concurrency: int | None
) -> float:
    """`concurrency` None: the steady reconcile; else every container inspected."""
    started = trio.current_time()
    if concurrency is None:
        running = await fetch_running(client, known=lifecycle.known_host_ports())
    else:
        running = await fetch_running(client, concurrency=concurrency)
    await lifecycle.reconcile(running)
    return (trio.current_time() - started) * 1000


async def main(containers: int, rounds: int) -> dict[str, Any]:
    bounds = (None, INSPECT_CONCURRENCY, 1)
    samples: dict[int | None, list[float]] = {bound: [] for bound in bounds}
    async with fake_engine_process() as (socket_path, control):
        await control.post("/fake/run", params={"count": containers})
        with tempfile.TemporaryDirectory(prefix="fhd-bench-") as directory:
            lifecycle = ContainerLifecycle(
                mappings_dir=Path(directory) / "containerResourceMappings",
                registry=ContainerRegistry(),
            )
            async with DockerClient(socket_path) as client:
                await lifecycle.adopt(await fetch_running(client))
                for _ in range(3):  # warm the connection pool and the fake
                    await reconcile_once(client, lifecycle, None)
                for _ in range(rounds):
                    for bound in bounds:
                        samples[bound].append(await reconcile_once(client, lifecycle, bound))
    return {
        "containers": containers,
        "rounds": rounds,
        **{
            ("steady_ms" if bound is None else f"confirm_all_{bound}_at_a_time_ms"): {
                "median": round(statistics.median(values), 2),
                "p90": round(statistics.quantiles(values, n=10)[-1], 2),
            }
            for bound, values in samples.items()
        },
    }


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    measured = trio.run(main, count, repeat)
    print(json.dumps(measured, indent=2))
    header = results_header("one reconcile on the fake engine (bench/bench_reconcile.py)")
    write_results(REPO / "bench" / "results" / "reconcile.json", {**header, **measured})
