"""Does the Docker event path wait for the API? (`make bench`; numbers only, never asserted.)

One trio loop holds what the service's does: the Docker event stream (reader, inspect,
lifecycle writing the mapping files on the machine's disk), the HTTPS API (`serve_api` with
the real app) and JSON logging at info. The fake engine runs in its own process, like
dockerd. Containers are started one at a time on it; each one's latency is the `start`
event's timeNano to the moment inotify, in another process (bench/tty_observer.py), sees its
`tty` file renamed into place. Phases alternate in interleaved rounds: idle; the same under
`wrk` with 50 keep-alive connections on `GET /health`; and under 50 connections of
`PUT /set_container_dpi` on one long-lived container, a new DPI each request (DPI and
`.ready` rewritten and fsynced, with their directory, every time); and, as the machine's own
floor, the same /health load sent to a bare quart-trio app in another process (bench_floors'),
which costs the event path only the cores that wrk and that app take. Goals (issue 14): start ->
tty p50 under the /health load at most 1.5x idle, p99 under the set_container_dpi load at
most 2x idle (ratios per round against that round's idle phase, medians of the rounds).
Per phase also: the part from the start event to the lifecycle (event read, inspected), from
there to the worker thread starting the write, the write's time in that thread,
set_container_dpi answers/s and mapping writes/s (concurrent requests for one container
share writes). `--no-priority` serves the API without the lifecycle's holds
(fractal_hostd/event_priority.py), the A/B of that mechanism.
Writes bench/results/priority.json.

    python bench/bench_priority.py [--rounds 3] [--starts 100]
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_api import server_process  # noqa: E402
from bench_common import results_header, write_results  # noqa: E402
from bench_docker import fake_engine_process, percentile, stream  # noqa: E402

from fractal_hostd.api.app import create_app  # noqa: E402
from fractal_hostd.api.server import serve_api  # noqa: E402
from fractal_hostd.api.tls import generate_certificate  # noqa: E402
from fractal_hostd.containers.info import ContainerInfo  # noqa: E402
from fractal_hostd.containers.lifecycle import ContainerLifecycle, run_in_thread  # noqa: E402
from fractal_hostd.containers.mapping import MappingDir  # noqa: E402
from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry  # noqa: E402
from fractal_hostd.docker.client import DockerClient  # noqa: E402
from fractal_hostd.hoststate import DockerStatus, HostState  # noqa: E402
from fractal_hostd.metrics import Metrics  # noqa: E402
from fractal_hostd.process.logs import setup_logging  # noqa: E402

RESULTS = REPO / "bench" / "results" / "priority.json"
PHASES = ("idle", "api_load", "api_load_elsewhere", "dpi_load")
# Issue 14, goal 1: load / idle, each round against its own idle phase.
GOALS = {"api_load": {"p50_ms": 1.5}, "dpi_load": {"p99_ms": 2.0}}
AUTH_SECRET = "bench-secret-0123456789"
T = TypeVar("T")
KEEP_AT_MOST = 20  # containers alive at once (TTYs 10-63)


class NotingLifecycle(ContainerLifecycle):
    """The real lifecycle, noting when each container reached it (event read, inspected):
    start -> tty splits into the loop's part before it and the files' part after."""

    def __init__(self, mappings: Path, registry: ContainerRegistry) -> None:
        super().__init__(mappings_dir=mappings, registry=registry, run_blocking=self._in_thread)
        self.entered_at: dict[str, int] = {}
        self.thread_at: dict[str, int] = {}  # its first write began in the worker thread
        self.write_ms: dict[str, float] = {}  # how long that write took in the thread
        self.requests_answered = 0  # set_start_values calls that returned
        self.writes = 0  # mapping writes begun (every container's, and the load's)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        def noted() -> T:
            owner = getattr(getattr(fn, "func", None), "__self__", None)
            if not isinstance(owner, MappingDir):
                return fn()
            self.writes += 1
            name = owner.path.name
            self.thread_at.setdefault(name, time.time_ns())
            began = time.perf_counter()
            try:
                return fn()
            finally:
                self.write_ms.setdefault(name, (time.perf_counter() - began) * 1000)

        return await run_in_thread(noted)

    async def on_running(self, info: ContainerInfo) -> None:
        self.entered_at.setdefault(info.id, time.time_ns())
        await super().on_running(info)

    async def set_start_values(
        self, host_port: int, *, dpi: int, container_arn: str | None = None
    ) -> ContainerRecord:
        record = await super().set_start_values(host_port, dpi=dpi, container_arn=container_arn)
        self.requests_answered += 1
        return record


class TtyObserver:
    """`bench/tty_observer.py` in its own process: when each `tty` file was renamed into
    place, as inotify (hence a container) sees it."""

    def __init__(self) -> None:
        self.seen_at: dict[str, int] = {}
        self.late = 0

    async def run(
        self, mappings: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        process = await trio.lowlevel.open_process(
            [sys.executable, str(REPO / "bench" / "tty_observer.py"), str(mappings)],
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            buffered = b""
            started = False
            async for chunk in process.stdout:
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    if line == b"ready":
                        started = True
                        task_status.started()
                        continue
                    container_id, when, *late = line.decode().split()
                    self.seen_at.setdefault(container_id, int(when))
                    self.late += bool(late)
            if not started:
                raise RuntimeError("tty observer exited before it was ready")
        finally:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()


def dpi_load_script(path: Path, host_port: int) -> Path:
    """wrk's Lua for set_container_dpi with a new DPI each request: the same value twice
    writes nothing (the lifecycle rewrites only what differs), a new one writes DPI and
    `.ready` again, each fsynced with its directory (contract §3)."""
    path.write_text(
        f'wrk.method = "PUT"\n'
        f'wrk.headers["Authorization"] = "Bearer {AUTH_SECRET}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        f'  local body = \'{{"host_port": {host_port}, "dpi": \' .. (counter % 900 + 50) .. "}}"\n'
        "  return wrk.format(nil, nil, nil, body)\n"
        "end\n"
    )
    return path


async def starts(
    count: int,
    control: Any,
    observer: TtyObserver,
    registry: ContainerRegistry,
    start_times: dict[str, int],
    lifecycle: NotingLifecycle,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Start `count` containers one at a time; each one's start -> `tty` in ms, its part
    from the start event to the lifecycle, from there to the thread, and its write there.
    They are removed now and then (but not the load's target) to free TTYs."""
    latencies: list[float] = []
    to_lifecycle: list[float] = []
    to_thread: list[float] = []
    write_ms: list[float] = []
    started: list[str] = []
    for _ in range(count):
        [container_id] = (await control.post("/fake/run", params={"count": 1})).json()
        started.append(container_id)
        with trio.fail_after(30):
            while (
                container_id not in observer.seen_at
                or container_id not in start_times
                or container_id not in lifecycle.write_ms
            ):
                await trio.sleep(0.001)
        latencies.append((observer.seen_at[container_id] - start_times[container_id]) / 1e6)
        entered = lifecycle.entered_at[container_id]
        to_lifecycle.append((entered - start_times[container_id]) / 1e6)
        to_thread.append((lifecycle.thread_at[container_id] - entered) / 1e6)
        write_ms.append(lifecycle.write_ms[container_id])
        if len(started) >= KEEP_AT_MOST:
            for old in started:
                await control.post("/fake/remove", params={"id": old})
            with trio.fail_after(30):
                while any(registry.get(old) for old in started):
                    await trio.sleep(0.005)
            started.clear()
        await trio.sleep(0.01)  # one start at a time, as a host sees them
    for old in started:
        await control.post("/fake/remove", params={"id": old})
    return latencies, to_lifecycle, to_thread, write_ms


def load_command(phase: str, url: str, floor_url: str, script: Path) -> list[str] | None:
    if phase == "api_load":
        return ["wrk", "-t2", "-c50", "-d600s", url + "/health"]
    if phase == "api_load_elsewhere":
        return ["wrk", "-t2", "-c50", "-d600s", floor_url + "/health"]
    if phase == "dpi_load":
        return ["wrk", "-t2", "-c50", "-d600s", "-s", str(script), url + "/set_container_dpi"]
    return None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    phases: dict[str, list[dict[str, float]]] = {phase: [] for phase in PHASES}
    async with fake_engine_process() as (socket_path, control):
        with tempfile.TemporaryDirectory(prefix="bench-priority-", dir="/var/tmp") as tmp:
            workdir = Path(tmp)
            mappings = workdir / "mappings"
            mappings.mkdir()
            registry = ContainerRegistry()
            lifecycle = NotingLifecycle(mappings, registry)
            state = HostState(version="bench", environment="localdev")
            status = DockerStatus()
            app = create_app(
                state=state,
                registry=registry,
                lifecycle=lifecycle,
                metrics=Metrics(),
                auth_secret=AUTH_SECRET,
                cloud_storage=None,
                container_wait=1.0,
            )
            tls = generate_certificate(workdir / "private")
            start_times: dict[str, int] = {}
            observer = TtyObserver()
            stop_api = trio.Event()
            async with (
                DockerClient(socket_path) as client,
                DockerClient(socket_path) as events_client,
                stream(client, lifecycle, status) as nursery,
            ):

                async def note_start_times() -> None:
                    filters = {"type": ["container"], "event": ["start"]}
                    async with events_client.events(filters=filters) as events:
                        async for event in events:
                            start_times[event["id"]] = event["timeNano"]

                nursery.start_soon(note_start_times)
                await nursery.start(observer.run, mappings)
                url = await nursery.start(
                    functools.partial(
                        serve_api,
                        app,
                        bind="127.0.0.1:0",
                        certfile=tls.certfile,
                        keyfile=tls.keyfile,
                        shutdown_trigger=stop_api.wait,
                        priority=None if args.no_priority else lifecycle.priority,
                    )
                )
                # The set_container_dpi load's target lives through the whole run.
                [target] = (await control.post("/fake/run", params={"count": 1})).json()
                with trio.fail_after(30):
                    while (record := registry.get(target)) is None:
                        await trio.sleep(0.005)
                script = dpi_load_script(workdir / "dpi.lua", record.host_port)
                await trio.sleep(0.2)
                gc.freeze()  # as the service does once start-up is done
                for round_number in range(args.rounds):
                    for phase in PHASES:
                        wrk = None
                        command = load_command(phase, url, args.floor_url, script)
                        if command is not None:
                            wrk = await trio.lowlevel.open_process(
                                command, stdout=subprocess.DEVNULL
                            )
                            await trio.sleep(1)  # connections up, load steady
                        answered, writes = lifecycle.requests_answered, lifecycle.writes
                        began = time.perf_counter()
                        try:
                            latencies, to_lifecycle, to_thread, write_ms = await starts(
                                args.starts, control, observer, registry, start_times, lifecycle
                            )
                        finally:
                            if wrk is not None:
                                wrk.terminate()
                                await wrk.wait()
                        elapsed = time.perf_counter() - began
                        result = {
                            "dpi_answered_per_s": round(
                                (lifecycle.requests_answered - answered) / elapsed
                            ),
                            "mapping_writes_per_s": round((lifecycle.writes - writes) / elapsed),
                            "p50_ms": round(statistics.median(latencies), 3),
                            "p99_ms": round(percentile(latencies, 99), 3),
                            "max_ms": round(max(latencies), 3),
                            "to_lifecycle_p50_ms": round(statistics.median(to_lifecycle), 3),
                            "to_lifecycle_p99_ms": round(percentile(to_lifecycle, 99), 3),
                            "lifecycle_to_thread_p50_ms": round(statistics.median(to_thread), 3),
                            "lifecycle_to_thread_p99_ms": round(percentile(to_thread, 99), 3),
                            "write_in_thread_p50_ms": round(statistics.median(write_ms), 3),
                            "write_in_thread_p99_ms": round(percentile(write_ms, 99), 3),
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
        phase: {
            key: round(
                statistics.median(
                    load[key] / idle[key]
                    for load, idle in zip(phases[phase], phases["idle"], strict=True)
                ),
                2,
            )
            for key in ("p50_ms", "p99_ms")
        }
        for phase in PHASES[1:]
    }
    return {
        "phases": phases,
        "load_to_idle": ratios,
        "goals": GOALS,
        "tty_seen_late": observer.late,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument(
        "--no-priority",
        action="store_true",
        help="the API ignores the holds of container starts (A/B of fractal_hostd.event_priority)",
    )
    args = parser.parse_args()
    log = (REPO / "bench" / "results" / "priority-service.log").open("w")
    sys.stderr = log  # the JSON log lines at info, as in production, to a file
    setup_logging(fmt="json", level="info")
    with (
        tempfile.TemporaryDirectory(prefix="bench-priority-floor-", dir="/var/tmp") as floor_dir,
        server_process(
            [str(REPO / "bench" / "bench_floors.py"), "--serve-floor", "quart_trio", floor_dir],
            Path(floor_dir),
            AUTH_SECRET,
            wait_s=15,
        ) as (floor_url, _),
    ):
        args.floor_url = floor_url
        measured = trio.run(run, args)
    result = {
        **results_header(
            "start event -> tty renamed into place (inotify, another process) on the fake "
            "engine: idle vs 50-connection /health and set_container_dpi loads in the same "
            "loop, and the /health load sent to a bare quart-trio app in another process "
            "(bench/bench_priority.py)"
        ),
        **measured,
    }
    print(json.dumps(measured["load_to_idle"]))
    write_results(RESULTS, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
