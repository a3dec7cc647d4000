"""Does the Docker event path wait for the API? (`make bench`; numbers only, never asserted.)

One trio loop holds what the service's does: the Docker event stream (reader, inspect,
lifecycle writing the mapping files on the machine's disk), the HTTPS API (`serve_api` with
the real app) and JSON logging at info. The fake engine runs in its own process, like
dockerd. Containers are started one at a time on it; each one's latency is the `start`
event's timeNano to the moment the lifecycle has written its files. Phases alternate in
interleaved rounds: idle, then the same under `wrk` with 50 keep-alive connections on
`GET /health`. Goal (issue 14): start -> tty p50 under that load at most 1.5x idle.
Writes bench/results/priority.json.

    python bench/bench_priority.py [--rounds 3] [--starts 60]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_common import results_header, write_results  # noqa: E402
from bench_docker import TimedLifecycle, fake_engine_process, percentile, stream  # noqa: E402

from fractal_hostd.api.app import create_app  # noqa: E402
from fractal_hostd.api.server import serve_api  # noqa: E402
from fractal_hostd.api.tls import generate_certificate  # noqa: E402
from fractal_hostd.containers.registry import ContainerRegistry  # noqa: E402
from fractal_hostd.docker.client import DockerClient  # noqa: E402
from fractal_hostd.hoststate import DockerStatus, HostState  # noqa: E402
from fractal_hostd.metrics import Metrics  # noqa: E402
from fractal_hostd.process.logs import setup_logging  # noqa: E402

RESULTS = REPO / "bench" / "results" / "priority.json"
GOAL_P50_RATIO = 1.5
KEEP_AT_MOST = 20  # containers alive at once (TTYs 10-63)


async def starts(
    count: int,
    control: Any,
    lifecycle: TimedLifecycle,
    registry: ContainerRegistry,
    start_times: dict[str, int],
) -> list[float]:
    latencies: list[float] = []
    for _ in range(count):
        [container_id] = (await control.post("/fake/run", params={"count": 1})).json()
        with trio.fail_after(30):
            while container_id not in lifecycle.written_at or container_id not in start_times:
                await trio.sleep(0.001)
        latencies.append((lifecycle.written_at[container_id] - start_times[container_id]) / 1e6)
        if len(registry.records()) >= KEEP_AT_MOST:
            await control.post("/fake/removeall")
            with trio.fail_after(30):
                while registry.records():
                    await trio.sleep(0.005)
        await trio.sleep(0.01)  # one start at a time, as a host sees them
    return latencies


async def run(args: argparse.Namespace) -> dict[str, Any]:
    phases: dict[str, list[dict[str, float]]] = {"idle": [], "api_load": []}
    async with fake_engine_process() as (socket_path, control):
        with tempfile.TemporaryDirectory(prefix="bench-priority-", dir="/var/tmp") as tmp:
            workdir = Path(tmp)
            (workdir / "mappings").mkdir()
            registry = ContainerRegistry()
            lifecycle = TimedLifecycle(workdir / "mappings", registry)
            state = HostState(version="bench", environment="localdev")
            status = DockerStatus()
            app = create_app(
                state=state,
                registry=registry,
                lifecycle=lifecycle,
                metrics=Metrics(),
                auth_secret="bench-secret-0123456789",
                cloud_storage=None,
                container_wait=1.0,
            )
            tls = generate_certificate(workdir / "private")
            start_times: dict[str, int] = {}
            stop_api = trio.Event()
            async with (
                DockerClient(socket_path) as client,
                DockerClient(socket_path) as observer,
                stream(client, lifecycle, status) as nursery,
            ):

                async def note_start_times() -> None:
                    filters = {"type": ["container"], "event": ["start"]}
                    async with observer.events(filters=filters) as events:
                        async for event in events:
                            start_times[event["id"]] = event["timeNano"]

                nursery.start_soon(note_start_times)
                url = await nursery.start(
                    functools.partial(
                        serve_api,
                        app,
                        bind="127.0.0.1:0",
                        certfile=tls.certfile,
                        keyfile=tls.keyfile,
                        shutdown_trigger=stop_api.wait,
                    )
                )
                await trio.sleep(0.2)
                gc.freeze()  # as the service does once start-up is done
                for round_number in range(args.rounds):
                    for phase in ("idle", "api_load"):
                        wrk = None
                        if phase == "api_load":
                            wrk = await trio.lowlevel.open_process(
                                ["wrk", "-t2", "-c50", "-d120s", url + "/health"],
                                stdout=subprocess.DEVNULL,
                            )
                            await trio.sleep(1)  # connections up, load steady
                        try:
                            latencies = await starts(
                                args.starts, control, lifecycle, registry, start_times
                            )
                        finally:
                            if wrk is not None:
                                wrk.terminate()
                                await wrk.wait()
                        result = {
                            "p50_ms": round(statistics.median(latencies), 3),
                            "p99_ms": round(percentile(latencies, 99), 3),
                            "max_ms": round(max(latencies), 3),
                        }
                        phases[phase].append(result)
                        print(
                            f"round {round_number + 1} {phase:<9} {json.dumps(result)}", flush=True
                        )
                        await trio.sleep(1)
                stop_api.set()
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
    ratios = {
        key: round(
            statistics.median(
                load[key] / idle[key]
                for load, idle in zip(phases["api_load"], phases["idle"], strict=True)
            ),
            2,
        )
        for key in ("p50_ms", "p99_ms")
    }
    return {"phases": phases, "load_to_idle": ratios, "goal_p50_ratio": GOAL_P50_RATIO}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--starts", type=int, default=60)
    args = parser.parse_args()
    log = (REPO / "bench" / "results" / "priority-service.log").open("w")
    sys.stderr = log  # the JSON log lines at info, as in production, to a file
    setup_logging(fmt="json", level="info")
    measured = trio.run(run, args)
    result = {
        **results_header(
            "start -> files on the fake engine, idle vs a 50-connection /health load "
            "in the same loop (bench/bench_priority.py)"
        ),
        **measured,
    }
    print(json.dumps(measured["load_to_idle"]))
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
