"""The chaos driver: seeded random operations and faults against the real service, invariants
checked from outside after every step (see docs/chaos.md).

Determinism: every choice comes from one `random.Random(seed)` and depends only on the
driver's own model of the containers (never on timing or on answers), so the same seed makes
the same operations in the same order; on the fake engine, whose host ports and event order
the driver controls, a run replays exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tests.chaos import plan
from tests.chaos.dockerd import PrivateDockerd
from tests.chaos.engines import Engine, EngineError, FakeEngine, Live, RealEngine
from tests.chaos.fake_engine import ChaosFakeEngine
from tests.chaos.invariants import Checker, FileEntry, MappingEntry, Snapshot
from tests.chaos.service import Api, Service, free_port
from tests.fakes.imds import FakeImds, running_fake_imds
from tests.fakes.webserver import FakeWebserver, running_fake_webserver
from tests.service_harness import AUTH_SECRET, environ_without_service_settings

HERE = Path(__file__).resolve().parent
READY_TIMEOUT = 60.0
MAX_LIVE_MANAGED = 30  # TTYs 10-63: stay clear of exhaustion (an allowed, reported state)
MAX_EXITED = 15
TMPFS_SIZE = "4m"


@dataclass
class Options:
    seed: int
    engine: str = "fake"  # "fake" | "real"
    steps: int = 200
    duration: float | None = None  # seconds; stops at whichever comes first
    kinds: set[str] = field(default_factory=set)
    fault_rate: float = 0.15
    max_ops: int = 3  # operations per step: 1..max_ops, applied back to back
    bound: float | None = None  # convergence bound (s); default by engine
    break_invariant: str | None = None  # "duplicate_tty": prove the checker catches it
    break_at: int = 5
    strict_heartbeats: bool = False
    verbose: bool = False
    log_dir: Path | None = None


@dataclass
class Model:
    """The driver's own view of one container it made (drives the draws: deterministic)."""

    index: int
    id: str
    managed: bool
    state: str  # running | paused | exited
    host_port: int | None = None
    always: bool = False


class Violation(Exception):
    def __init__(self, step: int, what: str, problems: list[str]) -> None:
        super().__init__(f"step {step} ({what}): " + "; ".join(problems))
        self.step, self.what, self.problems = step, what, problems


@dataclass
class Result:
    seed: int
    engine: str
    steps: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    lifecycles: int = 0
    convergence: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    api_answers: Counter[str] = field(default_factory=Counter)
    max_fds: int = 0
    max_rss_kib: int = 0
    elapsed: float = 0.0
    violation: str | None = None
    log: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        every = [t for times in self.convergence.values() for t in times]
        return {
            "seed": self.seed,
            "engine": self.engine,
            "steps": self.steps,
            "lifecycles": self.lifecycles,
            "operations": sum(self.operations.values()),
            "faults": sum(self.faults.values()),
            "operations_by_kind": dict(sorted(self.operations.items())),
            "faults_by_kind": dict(sorted(self.faults.items())),
            "convergence_s": figures(every),
            "convergence_by_fault_s": {
                kind: figures(times) for kind, times in sorted(self.convergence.items())
            },
            "api_answers": dict(sorted(self.api_answers.items())),
            "max_fds": self.max_fds,
            "max_rss_kib": self.max_rss_kib,
            "elapsed_s": round(self.elapsed, 1),
            "violation": self.violation,
        }


def figures(times: list[float]) -> dict[str, float | int]:
    if not times:
        return {"n": 0}
    ordered = sorted(times)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 4),
        "p99": round(pick(0.99), 4),
        "max": round(ordered[-1], 4),
    }


class Driver:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.result = Result(options.seed, options.engine)
        self.bound = options.bound or (10.0 if options.engine == "fake" else 30.0)
        self.poll = 0.05 if options.engine == "fake" else 0.2
        self.work = Path(
            tempfile.mkdtemp(prefix=f"chaos-{options.engine[0]}{options.seed}-", dir="/tmp")
        )
        self.root = self.work / "fractal"
        self.mappings = self.root / "containerResourceMappings"
        self.outside = self.work / "outside"
        self.models: list[Model] = []
        self.next_index = 0
        self.fresh: set[str] = set()  # (re)started this step: TTY learned next step
        self.planted: set[str] = set()
        self.freed_ports: list[int] = []
        self.checker = Checker()
        self.mounts_in_flight = 0
        self.draining_expected = False
        self.tmpfs = False
        self.rclone_modes: dict[str, str] = {}
        self.step = 0
        self.fake: ChaosFakeEngine | None = None
        self.dockerd: PrivateDockerd | None = None
        self.engine: Engine
        self.webserver: FakeWebserver
        self.imds: FakeImds
        self.service: Service
        self.api: Api
        self._outside_digest = ""
        self._nursery: trio.Nursery | None = None

    # ---- logging ----------------------------------------------------------------------------

    def note(self, text: str) -> None:
        line = f"step {self.step}: {text}"
        self.result.log.append(line)
        if self.o.verbose:
            print(line, flush=True)

    # ---- set-up -------------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        self.root.mkdir()
        if os.geteuid() == 0:
            subprocess.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={TMPFS_SIZE},mode=0755",
                    "chaos",
                    str(self.root),
                ],
                check=True,
            )
            self.tmpfs = True
        (self.outside / "target-dir").mkdir(parents=True)
        (self.outside / "target-dir" / "keep").write_text("outside, must not change")
        (self.outside / "target-file").write_text("outside, must not change")
        self._outside_digest = self._digest_outside()
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        (self.work / "backing").mkdir()
        self._write_rclone_control()
        wrapper = bin_dir / "rclone"
        wrapper.write_text(
            f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "chaos_rclone.py"}" '
            f'"{self.work / "rclone.json"}" "$@"\n'
        )
        wrapper.chmod(0o755)

    def _write_rclone_control(self) -> None:
        control = {
            "real": shutil.which("rclone") or "/usr/bin/rclone",
            "backing": str(self.work / "backing"),
            "modes": self.rclone_modes,
        }
        tmp = self.work / "rclone.json.tmp"
        tmp.write_text(json.dumps(control))
        tmp.replace(self.work / "rclone.json")

    def _env(self, docker_socket: str, api_port: int) -> dict[str, str]:
        env = environ_without_service_settings()
        env.update(
            APP_ENV="dev",
            PATH=f"{self.work / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
            FRACTAL_ROOT=str(self.root),
            FRACTAL_PRIVATE_DIR=str(self.work / "private"),
            DOCKER_HOST=f"unix://{docker_socket}",
            FRACTAL_API_BIND=f"127.0.0.1:{api_port}",
            FRACTAL_WEBSERVER_URL=self.webserver.url,
            FRACTAL_WEBSERVER_AUTH_SECRET=AUTH_SECRET,
            FRACTAL_IMDS_URL=self.imds.url,
            FRACTAL_HEARTBEAT_INTERVAL="1",
            FRACTAL_HEARTBEAT_JITTER="0.2",
            FRACTAL_SPOT_POLL_INTERVAL="0.5",
            FRACTAL_CONTAINER_WAIT="1",
            FRACTAL_SHUTDOWN_REPORT_TIMEOUT="2",
            FRACTAL_DOCKER_UNREACHABLE_BUDGET="90",
            FRACTAL_LOG_FORMAT="json",
            FRACTAL_LOG_LEVEL="info",
            PYTHONUNBUFFERED="1",
        )
        return env

    async def run(self) -> Result:
        started = time.monotonic()
        print(f"chaos: SEED={self.o.seed} ENGINE={self.o.engine} work dir {self.work}", flush=True)
        self._prepare_dirs()
        try:
            async with (
                running_fake_webserver() as self.webserver,
                running_fake_imds() as self.imds,
                trio.open_nursery() as nursery,
            ):
                try:
                    await self._with_engine(nursery)
                finally:
                    nursery.cancel_scope.cancel()
        except* Violation as group:
            first = _first_leaf(group)
            self.result.violation = str(first)
            self.result.steps = getattr(first, "step", self.step)
        finally:
            self.result.elapsed = time.monotonic() - started
            if hasattr(self, "api"):
                for answer in self.api.results:
                    path = answer.call.split(" ")[1]
                    self.result.api_answers[f"{path} {answer.status or 'no answer'}"] += 1
            await self._tear_down()
        return self.result

    async def _with_engine(self, nursery: trio.Nursery) -> None:
        if self.o.engine == "fake":
            self.fake = ChaosFakeEngine(str(self.work / "docker.sock"))
            await nursery.start(self.fake.serve)
            self.engine = FakeEngine(self.fake)
        else:
            self.dockerd = PrivateDockerd(Path("/var/tmp") / self.work.name)
            await trio.to_thread.run_sync(self.dockerd.start)
            await trio.to_thread.run_sync(self.dockerd.import_test_image)
            self.engine = RealEngine(self.dockerd.socket_path)
        port = free_port()
        self.service = Service(
            self._env(self.engine.socket_path, port), self.work / "service.log", port
        )
        self.api = Api(port)
        try:
            async with trio.open_nursery() as api_tasks:
                self._nursery = api_tasks
                try:
                    await self._steps()
                finally:
                    api_tasks.cancel_scope.cancel()
        finally:
            await self.api.aclose()

    async def _steps(self) -> None:
        await self._start_service()
        await self._converge("start-up")
        deadline = time.monotonic() + self.o.duration if self.o.duration else None
        for step in range(1, self.o.steps + 1):
            self.step = step
            if deadline is not None and time.monotonic() > deadline:
                break
            what = await self._one_step()
            self.result.steps = self.step
            await self._converge(what)
            if self.o.break_invariant and self.step == self.o.break_at:
                await self._break_on_purpose()
                await self._converge("deliberate breakage")
        await self._final_stop()

    async def _tear_down(self) -> None:
        with trio.CancelScope(shield=True):
            if getattr(self, "service", None) is not None:
                await self.service.kill_now()
            self._kill_our_processes()
            self._unmount_ours()
            engine = getattr(self, "engine", None)
            if isinstance(engine, RealEngine):
                await engine.aclose()
            if self.dockerd is not None:
                await trio.to_thread.run_sync(self.dockerd.clean_up)
            if self.tmpfs:
                subprocess.run(["umount", "-l", str(self.root)], check=False)
            if self.o.log_dir is not None:
                self.o.log_dir.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copy(
                        self.work / "service.log", self.o.log_dir / f"{self.work.name}.service.log"
                    )
            if self.result.violation is None and not _mount_points_under(self.work):
                shutil.rmtree(self.work, ignore_errors=True)

    def _kill_our_processes(self) -> None:
        for pid, _ in self._our_processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def _unmount_ours(self) -> None:
        for point in _mount_points_under(self.work):
            if Path(point) == self.root:
                continue
            subprocess.run(["fusermount3", "-u", "-z", point], check=False, capture_output=True)

    # ---- the service --------------------------------------------------------------------------

    async def _start_service(self) -> None:
        before = len(self.webserver.heartbeats)
        await self.service.start(before)
        with trio.move_on_after(READY_TIMEOUT):
            while True:
                if self.service.pid is None:
                    raise Violation(
                        self.step,
                        "start-up",
                        [f"service exited during start-up, code {self.service.process.returncode}"],  # type: ignore[union-attr]
                    )
                if len(self.webserver.heartbeats) > before and await self.api.healthy():
                    return
                await trio.sleep(0.05)
        raise Violation(self.step, "start-up", [f"service not ready within {READY_TIMEOUT:g} s"])

    async def _stop_service(self, how: str) -> None:
        code = await self.service.stop(how, None)
        await trio.sleep(0.2)  # the dying heartbeat's answer is recorded before the exit
        self.service.close_run(len(self.webserver.heartbeats))
        self.note(f"service stopped by {how}: exit {code}")
        # What systemd's KillMode=mixed (systemd/fractal-hostd.service) does once the main
        # process is gone: SIGKILL what is left in the unit's cgroup (rclone daemons, a hung
        # rclone). Without it a hung rclone orphaned by a SIGKILL would count as a leak.
        self._kill_our_processes()

    async def _restart_service(self, how: str) -> None:
        await self._stop_service(how)
        if self.draining_expected:
            self.imds.clear_notices()
            self.draining_expected = False
        await self._start_service()

    async def _final_stop(self) -> None:
        # In-flight API calls (a hanging mount) end with the service.
        self.note("final SIGTERM")
        await self._stop_service("term")
        self.step += 1
        problems = self.checker.violations(await self._snapshot(service_up=False))
        leftover = _mount_points_under(self.root)
        if leftover:
            problems.append(f"FUSE mounts left after SIGTERM: {leftover}")
        problems = [p for p in problems if "has no mapping directory" not in p]
        # Mapping directories of still-running containers stay (contract §7 step 2).
        if problems:
            raise Violation(self.step, "final SIGTERM", problems)

    # ---- one step -----------------------------------------------------------------------------

    async def _one_step(self) -> str:
        fault = None
        if self.rng.random() < self.o.fault_rate:
            fault = plan.draw(self.rng, plan.FAULTS, self.o.kinds)
        count = self.rng.randint(1, self.o.max_ops)
        ops = [plan.draw(self.rng, plan.OPERATIONS, self.o.kinds) for _ in range(count)]
        if fault is None:
            for op in ops:
                if op is not None:
                    await self._operation(op)
            return "+".join(o for o in ops if o) or "nothing"
        self.result.faults[fault] += 1
        await self._fault(fault, [o for o in ops if o])
        return fault

    async def _ops(self, ops: list[str]) -> None:
        for op in ops:
            await self._operation(op)

    # ---- operations ---------------------------------------------------------------------------

    def _pick(self, states: tuple[str, ...], *, managed: bool | None = None) -> Model | None:
        chosen = [
            m
            for m in self.models
            if m.state in states and (managed is None or m.managed == managed)
        ]
        return self.rng.choice(chosen) if chosen else None

    def _live_managed(self) -> list[Model]:
        return [m for m in self.models if m.managed and m.state in ("running", "paused")]

    async def _operation(self, op: str) -> None:
        self.result.operations[op] += 1
        if op in ("run_managed", "run_unmanaged", "reuse_port"):
            await self._run_container(op)
        elif op in plan.OPERATIONS and op.startswith("api_"):
            await self._api_operation(op)
        else:
            await self._container_operation(op)

    async def _run_container(self, op: str) -> None:
        managed = op != "run_unmanaged"
        exited = [m for m in self.models if m.state == "exited"]
        if len(exited) > MAX_EXITED or (managed and len(self._live_managed()) >= MAX_LIVE_MANAGED):
            await self._container_operation("rm")
            return
        host_port = None
        if op == "reuse_port":
            if not self.freed_ports:
                return
            host_port = self.freed_ports.pop(self.rng.randrange(len(self.freed_ports)))
        always = self.o.engine == "real" and self.rng.random() < 0.3
        index = self.next_index
        self.next_index += 1
        name = f"chaos-{self.o.seed}-{index}"
        try:
            container_id = await self.engine.run(
                name, managed=managed, host_port=host_port, always=always
            )
        except EngineError as exc:
            self.note(f"{op} #{index} refused: {exc}")
            return
        model = Model(index, container_id, managed, "running", always=always)
        self.models.append(model)
        self.result.lifecycles += 1
        self.note(f"{op} #{index} port={host_port} always={always} -> {container_id[:12]}")

    async def _container_operation(self, op: str) -> None:
        states = {
            "start": ("exited",),
            "stop": ("running", "paused"),
            "kill": ("running", "paused"),
            "rm": ("running", "paused", "exited"),
            "pause": ("running",),
            "unpause": ("paused",),
            "restart": ("running", "paused", "exited"),
        }[op]
        model = self._pick(states)
        if model is None:
            return
        port_before = (
            await self._host_port(model) if op in ("stop", "kill", "rm", "restart") else None
        )
        try:
            await self.engine.op(op, model.id)
        except EngineError as exc:
            self.note(f"{op} #{model.index} refused: {exc}")
            return
        if op in ("start", "restart"):
            self.result.lifecycles += 1
            self._forget_tty(model.id)
        if port_before is not None and op != "restart":
            self.freed_ports.append(port_before)
            del self.freed_ports[:-20]
        model.state = {
            "start": "running",
            "stop": "exited",
            "kill": "exited",
            "rm": "removed",
            "pause": "paused",
            "unpause": "running",
            "restart": "running",
        }[op]
        if model.state == "removed":
            self.models.remove(model)
        self.note(f"{op} #{model.index} ({model.id[:12]})")

    async def _host_port(self, model: Model) -> int | None:
        if not model.managed:
            return None
        live = (await self.engine.live()).get(model.id)
        return live.host_port if live else None

    async def _api_operation(self, op: str) -> None:
        assert self._nursery is not None
        if op == "api_status":
            self._nursery.start_soon(self.api.status)
            self.note("GET /status")
            return
        target = self._pick(("running", "paused"), managed=True)
        if op == "api_unknown_port" or target is None:
            port = 1 + self.rng.randrange(1000)  # never a fake or docker-proxy port
        else:
            port = await self._host_port(target) or 1
        dpi = self.rng.choice([96, 120, 144, 192])
        if op == "api_dpi" or op == "api_unknown_port":
            body: dict[str, object] = {"host_port": port, "dpi": dpi}
            self._nursery.start_soon(self.api.call, "PUT", "/set_container_dpi", body)
        elif op == "api_start_values":
            body = {
                "host_port": port,
                "dpi": dpi,
                "container_ARN": f"arn:aws:ecs:us-east-1:1:task/chaos/{self.rng.randrange(10**6)}",
                "user_id": "chaos-user",
            }
            self._nursery.start_soon(self.api.call, "PUT", "/set_container_start_values", body)
        else:
            mode = op.removeprefix("api_mount_")
            self.rclone_modes[str(port)] = mode
            self._write_rclone_control()
            provider = self.rng.choice(["google_drive", "dropbox"])
            body = {
                "host_port": port,
                "provider": provider,
                "access_token": "chaos-access-token",
                "refresh_token": "chaos-refresh-token",
                "expiry": "2099-01-01T00:00:00Z",
                "token_type": "Bearer",
            }
            self._nursery.start_soon(self._mount, body)
        self.note(f"{op} host_port={port}")

    async def _mount(self, body: dict[str, object]) -> None:
        self.mounts_in_flight += 1
        try:
            await self.api.call("POST", "/mount_cloud_storage", body)
        finally:
            self.mounts_in_flight -= 1

    # ---- faults -------------------------------------------------------------------------------

    async def _fault(self, fault: str, ops: list[str]) -> None:
        self.note(f"FAULT {fault}")
        if fault in ("stream_cut", "engine_down", "stall", "service_freeze", "reorder_events"):
            # The service may learn of this step's restarts late: learn TTYs next step.
            self.fresh.update(m.id for m in self.models)
        if fault == "stream_cut":
            assert self.fake is not None or self.o.engine == "real"
            if self.fake is not None:
                self.fake.drop_streams()
            await self._ops(ops)
        elif fault in ("stall", "reorder_events", "lost_events"):
            assert self.fake is not None
            self.fake.holding = True
            await self._ops(ops)
            await trio.sleep(self.rng.uniform(0.15, 0.6))
            if fault == "lost_events":
                dropped = self.fake._held
                self.fake._held = []
                self.fake.holding = False
                self.note(f"dropped {len(dropped)} events")
            else:
                self.fake.release(self.rng if fault == "reorder_events" else None)
        elif fault == "duplicate_events":
            assert self.fake is not None
            self.fake.duplicate_remaining = self.rng.randint(2, 8)
            await self._ops(ops)
        elif fault == "inspect_error":
            assert self.fake is not None
            target = self._pick(("running", "paused", "exited"), managed=True)
            if target is not None:
                times = self.rng.randint(1, 3)
                self.fake.fail(f"^GET /containers/{target.id}/json$", 500, times=times)
                self.note(f"inspect of #{target.index} answers 500 {times} times; restart it")
                try:
                    await self.engine.op("restart", target.id)
                except EngineError as exc:  # its fixed host port was taken meanwhile
                    self.note(f"restart #{target.index} refused: {exc}")
                    target.state = "exited"
                else:
                    self._forget_tty(target.id)
                    target.state = "running"
                    self.result.lifecycles += 1
            await self._ops(ops)
        elif fault == "engine_down":
            assert self.fake is not None
            await self.fake.stop_listening()
            await self._ops(ops)
            await trio.sleep(self.rng.uniform(0.2, 1.5))
            await self.fake.start_listening()
        elif fault in ("service_kill", "service_term"):
            await self._ops(ops)
            await self._restart_service("kill" if fault == "service_kill" else "term")
        elif fault == "service_freeze":
            pid = self.service.pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                await self._ops(ops)
                await trio.sleep(self.rng.uniform(0.2, 1.0))
            finally:
                os.kill(pid, signal.SIGCONT)
        elif fault == "disk_full":
            await self._disk_full(ops)
        elif fault.startswith("plant_"):
            await self._plant(fault, ops)
        elif fault in ("webserver_fail", "webserver_blackhole"):
            if fault == "webserver_fail":
                self.webserver.heartbeat_status = 500
                self.webserver.handshake_failures = self.rng.randint(0, 2)
            else:
                self.webserver.heartbeat_blackhole = True
            await self._ops(ops)
            await trio.sleep(self.rng.uniform(0.5, 2.5))
            if self.rng.random() < 0.3:
                await self._restart_service("term")  # the dying heartbeat into the failure
            self.webserver.heartbeat_status = 200
            self.webserver.heartbeat_blackhole = False
        elif fault == "spot_notice":
            self.imds.schedule_spot("terminate")
            self.draining_expected = True
            await self._ops(ops)
        elif fault == "second_instance":
            await self._second_instance()
        elif fault in ("dockerd_kill", "dockerd_kill_always"):
            await self._dockerd_kill(ops, always=fault == "dockerd_kill_always")
        else:
            raise AssertionError(fault)

    async def _disk_full(self, ops: list[str]) -> None:
        if not self.tmpfs:
            await self._ops(ops)
            return
        filler = self.root / "chaos-filler"
        with contextlib.suppress(OSError), filler.open("wb") as file:
            while True:
                file.write(b"\0" * 65536)
        self.note("FRACTAL_ROOT is full")
        await self._ops(ops)
        await trio.sleep(self.rng.uniform(0.3, 1.5))
        filler.unlink()
        self.note("FRACTAL_ROOT freed")

    async def _plant(self, fault: str, ops: list[str]) -> None:
        """Plant untrusted entries under FRACTAL_ROOT, then restart the service: adoption is
        where it reads what it finds there."""
        target = self._pick(("running", "paused"), managed=True)
        needs_target = fault in ("plant_link_value", "plant_link_cloud", "plant_garbage_tty")
        if needs_target and target is None:
            await self._operation("run_managed")  # something live to tamper with
            await self._converge("operations")
            target = self._pick(("running", "paused"), managed=True)
            if target is None:
                return
        self.mappings.mkdir(parents=True, exist_ok=True)
        if fault == "plant_link_mapping":
            name = secrets.token_hex(32)
            (self.mappings / name).symlink_to(self.outside / "target-dir")
            self.planted.add(name)
            self.note(f"planted link {name[:12]} -> outside dir")
        elif fault == "plant_link_value":
            assert target is not None
            victim = self.rng.choice(["DPI", "tty", "ContainerARN", ".ready"])
            path = self.mappings / target.id / victim
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
                path.symlink_to(self.outside / "target-file")
            self._forget_tty(target.id)
            self.note(f"planted link #{target.index}/{victim} -> outside file")
        elif fault == "plant_link_cloud":
            assert target is not None
            port = await self._host_port(target)
            base = self.root / "cloudStorage"
            base.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):
                (base / str(port)).symlink_to(self.outside / "target-dir")
            self.note(f"planted link cloudStorage/{port} -> outside dir")
        elif fault == "plant_stray_file":
            name = secrets.token_hex(32)
            (self.mappings / name).write_text("stray")
            self.planted.add(name)
            self.note(f"planted stray file {name[:12]}")
        elif fault == "plant_garbage_tty":
            assert target is not None
            with contextlib.suppress(OSError):
                (self.mappings / target.id / "tty").write_text("garbage\n")
            self._forget_tty(target.id)
            self.note(f"garbage in #{target.index}/tty")
        else:
            path = self.mappings / secrets.token_hex(32)
            path.mkdir()
            (path / "tty").write_text("11")
            (path / "hostPort_for_my_32262_tcp").write_text("40000")
            self.note(f"planted dead container dir {path.name[:12]} (must be removed)")
        await self._ops(ops)
        await self._restart_service(self.rng.choice(["kill", "term"]))
        if fault == "plant_link_cloud":
            await self._operation("api_mount_ok")
        elif fault == "plant_link_value":
            await self._operation("api_dpi")

    def _forget_tty(self, container_id: str) -> None:
        # Tampered with, or (re)started: its TTY may legitimately be a new one.
        self.checker.forget(container_id)
        self.fresh.add(container_id)

    async def _second_instance(self) -> None:
        before = self._read_mappings()
        heartbeats = len(self.webserver.heartbeats)
        env = dict(self.service.env, FRACTAL_API_BIND=f"127.0.0.1:{free_port()}")
        with (self.work / "second.log").open("ab") as log:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "fractal_hostd", "run"],
                env=env,
                stdout=log,
                stderr=log,
                cwd=str(HERE.parent.parent),
            )
        problems = []
        with trio.move_on_after(20):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
            problems.append("a second instance kept running next to the first")
        elif process.returncode != 2:
            problems.append(f"a second instance exited {process.returncode}, expected 2")
        if _identities(self._read_mappings()) != _identities(before):
            problems.append("a second instance changed the mapping directories")
        if any(h.get("IsDyingHeartbeat") for h in self.webserver.heartbeats[heartbeats:]):
            problems.append("a second instance sent a dying heartbeat")
        if problems:
            raise Violation(self.step, "second_instance", problems)

    async def _dockerd_kill(self, ops: list[str], *, always: bool) -> None:
        assert self.dockerd is not None
        if always and not any(m.always for m in self.models):
            await self._run_always()
        await trio.to_thread.run_sync(self.dockerd.kill)
        await trio.sleep(self.rng.uniform(0.5, 3.0))
        await trio.to_thread.run_sync(self.dockerd.start)
        await self._refresh_models()
        await self._ops(ops)

    async def _run_always(self) -> None:
        index = self.next_index
        self.next_index += 1
        container_id = await self.engine.run(
            f"chaos-{self.o.seed}-{index}", managed=True, host_port=None, always=True
        )
        self.models.append(Model(index, container_id, True, "running", always=True))
        self.result.lifecycles += 1
        self.note(f"run_managed #{index} always=True -> {container_id[:12]}")

    async def _refresh_models(self) -> None:
        # dockerd restarted: what lives now is dockerd's say (only on the real engine).
        with trio.fail_after(60):
            while True:
                try:
                    live = await self.engine.live()
                    break
                except EngineError:
                    await trio.sleep(0.5)
        for model in self.models:
            self._forget_tty(model.id)  # --restart=always ones came back as new incarnations
            found = live.get(model.id)
            model.state = ("paused" if found.paused else "running") if found else "exited"
        self.note(f"after dockerd restart: {len(live)} live")

    # ---- deliberate breakage ------------------------------------------------------------------

    async def _break_on_purpose(self) -> None:
        if self.o.break_invariant == "duplicate_tty":
            while len(self._live_managed()) < 2:
                await self._run_container("run_managed")
                await self._converge("operations")
            first, second = self._live_managed()[:2]
            tty = (self.mappings / first.id / "tty").read_text()
            (self.mappings / second.id / "tty").write_text(tty)
            self.note(f"BREAK: #{second.index}/tty := #{first.index}'s {tty}")
        elif self.o.break_invariant == "stray_dir":
            path = self.mappings / ("f" * 64)
            path.mkdir(parents=True, exist_ok=True)
            self.note("BREAK: a directory for a container that never lived")
        else:
            raise ValueError(f"unknown break {self.o.break_invariant}")

    # ---- checking -----------------------------------------------------------------------------

    async def _converge(self, what: str) -> None:
        started = time.monotonic()
        problems: list[str] = []
        while True:
            if self.service.pid is None:
                code = self.service.process.returncode if self.service.process else None
                raise Violation(self.step, what, [f"service exited on its own, code {code}"])
            snap = await self._snapshot(service_up=True)
            problems = self.checker.violations(snap)
            if snap.resources:
                self.result.max_fds = max(self.result.max_fds, snap.resources[0])
                self.result.max_rss_kib = max(self.result.max_rss_kib, snap.resources[1])
            if not problems:
                self.checker.remember(snap, self.fresh)
                self.fresh = set()
                kind = what if what in plan.FAULTS or what == "start-up" else "operations"
                self.result.convergence[kind].append(time.monotonic() - started)
                return
            if time.monotonic() - started > self.bound:
                raise Violation(self.step, what, problems)
            await trio.sleep(self.poll)

    async def _snapshot(self, *, service_up: bool) -> Snapshot:
        live: dict[str, Live] = await self.engine.live()
        status = await self.api.status() if self.draining_expected and service_up else None
        return Snapshot(
            live=live,
            mappings=self._read_mappings(),
            planted=set(self.planted),
            mounts=self._mounts(),
            rclone_processes=self._our_processes(),
            outside_changed=self._outside_changes(),
            heartbeats=list(self.webserver.heartbeats),
            runs=list(self.service.runs),
            service_up=service_up,
            api_errors=[
                f"{r.call} -> {r.status} {r.body}"
                for r in self.api.results
                if r.status is not None and r.status >= 500
            ],
            resources=self.service.resources(),
            mounts_settled=self.mounts_in_flight == 0,
            draining_expected=self.draining_expected,
            strict_heartbeats=self.o.strict_heartbeats,
            status=status,
        )

    def _read_mappings(self) -> dict[str, MappingEntry]:
        found: dict[str, MappingEntry] = {}
        try:
            entries = list(os.scandir(self.mappings))
        except OSError:
            return found
        for entry in entries:
            kind = _kind(entry)
            files: dict[str, FileEntry] = {}
            if kind == "dir":
                with contextlib.suppress(OSError):
                    for inner in os.scandir(entry.path):
                        inner_kind = _kind(inner)
                        content = None
                        if inner_kind == "file":
                            with contextlib.suppress(OSError), open(inner.path, "rb") as file:
                                content = file.read(4096).decode(errors="replace")
                        files[inner.name] = FileEntry(inner_kind, content)
            found[entry.name] = MappingEntry(kind, files)
        return found

    def _mounts(self) -> list[tuple[int | None, str]]:
        base = self.root / "cloudStorage"
        found = []
        for point in _mount_points_under(base):
            relative = Path(point).relative_to(base).parts
            port = int(relative[0]) if relative and relative[0].isdigit() else None
            found.append((port, point))
        return found

    def _our_processes(self) -> list[tuple[int, str | None]]:
        """rclone wrappers and daemons of this run: (pid, mount point served or None)."""
        marker = str(self.work)
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv if a]
            if not any(marker in a for a in args) or "fractal_hostd" in args:
                continue
            if any(a.endswith("chaos_rclone.py") for a in args) or (
                args and args[0].endswith("rclone")
            ):
                point = (
                    args[args.index("mount") + 2]
                    if "mount" in args and len(args) > args.index("mount") + 2
                    else None
                )
                if any(a.endswith("chaos_rclone.py") for a in args):
                    point = None  # a wrapper still running is a hung mount, not a daemon
                found.append((int(pid), point))
        return found

    def _digest_outside(self) -> str:
        digest = hashlib.sha256()
        for directory, dirs, files in os.walk(self.outside, onerror=lambda _: None):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(directory) / name
                try:
                    info = path.lstat()
                    digest.update(f"{path} {info.st_mode:o}".encode())
                    if path.is_symlink():
                        digest.update(os.readlink(path).encode())
                    elif path.is_file():
                        digest.update(path.read_bytes())
                except OSError as exc:
                    digest.update(f"{path} {exc.errno}".encode())
        return digest.hexdigest()

    def _outside_changes(self) -> list[str]:
        changed = [f"a mount at {point}" for point in _mount_points_under(self.outside)]
        if self._digest_outside() != self._outside_digest:
            changed.append(f"the tree under {self.outside}")
        return changed


def _first_leaf(group: BaseExceptionGroup[Violation]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "other"


def _mount_points_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = (
            line.split(" ")[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        )
        if point.startswith(prefix):
            points.append(point)
    return points


def _identities(mappings: dict[str, MappingEntry]) -> dict[str, object]:
    """What only the service's own start-up or clean-up would change: which entries exist and
    each directory's tty and host port. DPI, ContainerARN and .ready may still change under the
    first instance while the second runs: API calls of earlier steps run in the background."""
    return {
        name: (
            entry.kind,
            entry.files.get("tty"),
            entry.files.get("hostPort_for_my_32262_tcp"),
        )
        for name, entry in mappings.items()
    }
