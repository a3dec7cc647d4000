"""Random event sequences against ContainerLifecycle on a real directory (hypothesis).

The machine keeps a model of Docker (`world`: running containers and their host ports) and
of what the lifecycle has been told (`told`). Events that the stream would deliver change
both; "missed" events change only the world, and `reconcile` or a service restart (`adopt`
by a new lifecycle on the same directory) bring the lifecycle back to the world's truth.

Hypothesis drives the machine from a worker thread of one trio run, and each rule calls the
real async API through `trio.from_thread.run`: the rules are sequential by nature, this
exercises exactly what the Docker layer calls, and it costs far less than a `trio.run` per
call. Interleavings inside trio are covered by tests/test_lifecycle.py. fsync is switched off
here: durability cannot be observed in a test and the syscalls would only slow the search.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fractal_hostd.containers import (
    ContainerInfo,
    ContainerLifecycle,
    ContainerRecord,
    ContainerRegistry,
    ContainerUnknown,
)
from fractal_hostd.containers.lifecycle import ContainerWithoutTty
from fractal_hostd.containers.ttypool import FIRST_TTY, LAST_TTY
from tests.containers_fixtures import cid, dir_files

PORTS = range(40000, 40100)
GARBAGE = {"tty": "x", "hostPort_for_my_32262_tcp": "", "DPI": "-1", ".ready": "no"}


class Disk:
    """The disk under every machine: `full` makes each fsync fail with ENOSPC (the test
    patches safefs's fsync with `fsync`; a no-op otherwise, since durability cannot be
    observed here). `writers` is the nursery where each boot's file writer (retries) runs."""

    full = False
    writers: trio.Nursery | None = None

    @classmethod
    def fsync(cls, fd: int) -> None:
        if cls.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fast_tmp() -> str | None:
    # tmpfs when there is one: thousands of small directories per run, no disk needed.
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def tamper(path: Path, text: str) -> None:
    """Change a file behind the service's back (mode as the service would have it)."""
    path.write_text(text)
    path.chmod(0o644)


def run(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    return trio.from_thread.run(fn, *args)


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="fhtest-lifecycle-", dir=_fast_tmp()))
        self.root = self.tmp / "containerResourceMappings"
        self.next_n = 1
        self.world: dict[str, int] = {}  # running managed containers in Docker: id -> port
        self.told: dict[str, int] = {}  # what the lifecycle believes runs
        # id -> (dpi, arn) of a ready container; dpi None: garbage DPI adopted as unknown
        self.start_values: dict[str, tuple[int | None, str | None]] = {}
        # id -> ContainerARN kept on disk by a container no longer ready (its DPI was garbage)
        self.arn_left: dict[str, str] = {}
        self.unmounted: list[str] = []
        self._boot()

    def _boot(self) -> None:
        self.registry = ContainerRegistry()
        self.lifecycle = ContainerLifecycle(
            mappings_dir=self.root, registry=self.registry, on_gone=self._unmount
        )
        if Disk.writers is not None:
            run(Disk.writers.start, self.lifecycle.run_file_writer)

    async def _unmount(self, record: ContainerRecord) -> None:
        await trio.lowlevel.checkpoint()
        self.unmounted.append(record.id)

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _new_id(self) -> str:
        self.next_n += 1
        return cid(self.next_n)

    def _free_port(self, offset: int) -> int:
        taken = set(self.world.values()) | set(self.told.values())
        for i in range(len(PORTS)):
            port = PORTS[(offset + i) % len(PORTS)]
            if port not in taken:
                return port
        raise AssertionError("model ran out of ports")

    def _infos(self) -> list[ContainerInfo]:
        infos = [ContainerInfo(i, p, True) for i, p in self.world.items()]
        # Docker lists unmanaged and stopped containers too: the lifecycle must skip them.
        infos.append(ContainerInfo(cid(10**9), None, True))
        infos.append(ContainerInfo(cid(10**9 + 1), 40999, False))
        return infos

    def _sync_told_with_world(self) -> None:
        for gone in set(self.told) - set(self.world):
            self.start_values.pop(gone, None)
            self.arn_left.pop(gone, None)
        self.told = dict(self.world)

    # --- events the stream delivers -------------------------------------------------

    @precondition(lambda self: len(self.world) < 60)
    @rule(count=st.integers(1, 30) | st.just(1), offset=st.integers(0, len(PORTS) - 1))
    def start(self, count: int, offset: int) -> None:
        infos = []
        for _ in range(count):
            port = self._free_port(offset)
            info = ContainerInfo(self._new_id(), port, True)
            self.world[info.id] = self.told[info.id] = port
            infos.append(info)
        run(self._start_all, infos)

    async def _start_all(self, infos: list[ContainerInfo]) -> None:
        for info in infos:
            await self.lifecycle.on_running(info)

    @rule()
    def start_unmanaged(self) -> None:
        run(self.lifecycle.on_running, ContainerInfo(self._new_id(), None, True))

    @rule()
    def start_event_but_already_exited(self) -> None:
        # Out of order: by the time we inspect, the container has died again.
        run(self.lifecycle.on_running, ContainerInfo(self._new_id(), 40998, False))

    @precondition(lambda self: self.told)
    @rule(data=st.data())
    def duplicate_start(self, data: st.DataObject) -> None:
        container_id = data.draw(st.sampled_from(sorted(self.told)))
        before = self.registry.get(container_id)
        assert before is not None
        tty = before.tty
        run(self.lifecycle.on_running, ContainerInfo(container_id, self.told[container_id], True))
        assert self.registry.get(container_id) is before
        assert before.tty == tty

    @precondition(lambda self: self.told)
    @rule(data=st.data(), destroy_too=st.booleans())
    def die(self, data: st.DataObject, destroy_too: bool) -> None:
        container_id = data.draw(st.sampled_from(sorted(self.told)))
        self.world.pop(container_id, None)
        self.unmounted.clear()
        run(self.lifecycle.on_gone, container_id)
        if destroy_too:
            run(self.lifecycle.on_gone, container_id)
        assert self.unmounted == [container_id]
        del self.told[container_id]
        self.start_values.pop(container_id, None)
        self.arn_left.pop(container_id, None)

    @precondition(lambda self: self.told)
    @rule(data=st.data(), offset=st.integers(0, len(PORTS) - 1))
    def docker_restart(self, data: st.DataObject, offset: int) -> None:
        # die + start of the same id; a "-p 32262" container may come back on another port.
        container_id = data.draw(st.sampled_from(sorted(self.told)))
        run(self.lifecycle.on_gone, container_id)
        del self.told[container_id]
        self.world.pop(container_id, None)
        self.start_values.pop(container_id, None)
        self.arn_left.pop(container_id, None)
        port = self._free_port(offset)
        self.world[container_id] = port
        run(self.lifecycle.on_running, ContainerInfo(container_id, port, True))
        self.told[container_id] = port

    @rule(n=st.integers(10**6, 10**6 + 5))
    def die_of_unknown_id(self, n: int) -> None:
        self.unmounted.clear()
        run(self.lifecycle.on_gone, cid(n))
        assert self.unmounted == []

    # --- the API ----------------------------------------------------------------------

    @precondition(lambda self: self.told)
    @rule(
        data=st.data(),
        dpi=st.integers(1, 400),
        arn=st.none() | st.sampled_from(["arn:aws:ecs:task/a", "arn:b"]),
    )
    def set_start_values(self, data: st.DataObject, dpi: int, arn: str | None) -> None:
        container_id = data.draw(st.sampled_from(sorted(self.told)))
        before = self.registry.get(container_id)
        assert before is not None
        if before.tty is None:
            with pytest.raises(ContainerWithoutTty):
                run(self._set, self.told[container_id], dpi, arn)
            return
        record = run(self._set, self.told[container_id], dpi, arn)
        assert record.id == container_id
        old_arn = self._old_arn(container_id)
        self.start_values[container_id] = (dpi, arn if arn is not None else old_arn)

    def _old_arn(self, container_id: str) -> str | None:
        """The ARN on disk before new start values (they keep it unless they bring one)."""
        kept = self.arn_left.pop(container_id, None)
        return self.start_values.get(container_id, (0, kept))[1]

    async def _set(self, port: int, dpi: int, arn: str | None) -> ContainerRecord:
        return await self.lifecycle.set_start_values(port, dpi=dpi, container_arn=arn)

    @rule(offset=st.integers(0, len(PORTS) - 1))
    def set_start_values_for_unknown_port(self, offset: int) -> None:
        port = self._free_port(offset)
        try:
            run(self._set, port, 96, None)
        except ContainerUnknown:
            return
        raise AssertionError("a port nobody has was accepted")

    # --- a full disk ------------------------------------------------------------------

    @precondition(lambda self: len(self.world) < 60)
    @rule(
        count=st.integers(0, 3),
        offset=st.integers(0, len(PORTS) - 1),
        data=st.data(),
        dpi=st.integers(1, 400),
    )
    def full_disk_for_a_while(self, count: int, offset: int, data: st.DataObject, dpi: int) -> None:
        Disk.full = True
        try:
            self.start(count, offset)  # registered, files pending
            assert self.lifecycle.pending_writes >= count
            if self.told:
                self._start_values_on_a_full_disk(data, dpi)
        finally:
            Disk.full = False
        run(self._drain)  # written without any other event

    def _start_values_on_a_full_disk(self, data: st.DataObject, dpi: int) -> None:
        container_id = data.draw(st.sampled_from(sorted(self.told)))
        record = self.registry.get(container_id)
        assert record is not None
        try:
            run(self._set, self.told[container_id], dpi, None)
        except ContainerWithoutTty:
            assert record.tty is None
            return
        except OSError:
            pass  # the API's 406; the values land with the retry
        old_arn = self._old_arn(container_id)
        self.start_values[container_id] = (dpi, old_arn)

    async def _drain(self) -> None:
        with trio.fail_after(30):
            while self.lifecycle.pending_writes:
                await trio.sleep(0.001)
        assert not [r.id for r in self.registry.records() if r.files_pending]

    # --- Docker changes we never heard of, and how we catch up -------------------------

    @precondition(lambda self: self.world)
    @rule(data=st.data())
    def missed_die(self, data: st.DataObject) -> None:
        del self.world[data.draw(st.sampled_from(sorted(self.world)))]

    @rule(offset=st.integers(0, len(PORTS) - 1))
    def missed_start(self, offset: int) -> None:
        self.world[self._new_id()] = self._free_port(offset)

    @rule()
    def reconcile(self) -> None:
        run(self.lifecycle.reconcile, self._infos())
        self._sync_told_with_world()

    @rule()
    def stray_directory_then_reconcile(self) -> None:
        # e.g. left by a die we processed while the directory could not be removed
        stray = self.root / self._new_id()
        stray.mkdir(parents=True)
        (stray / "tty").write_text("10")
        self.reconcile()

    @rule()
    def restart_service(self) -> None:
        keep = {r.id: r.tty for r in self.registry.records() if r.id in self.world}
        self._boot()
        run(self.lifecycle.adopt, self._infos())
        self._sync_told_with_world()
        for container_id, tty in keep.items():  # contract §8: a restart never changes a TTY
            if tty is not None:
                record = self.registry.get(container_id)
                assert record is not None
                assert record.tty == tty

    @precondition(lambda self: self.told)
    @rule(data=st.data(), name=st.sampled_from(sorted(GARBAGE)))
    def corrupt_then_restart(self, data: st.DataObject, name: str) -> None:
        victim = data.draw(st.sampled_from(sorted(self.told)))
        tamper(self.root / victim / name, GARBAGE[name])
        self.world.setdefault(victim, self.told[victim])
        self._boot()
        run(self.lifecycle.adopt, self._infos())
        # Adoption repairs what it can. A garbage DPI is no value of ours, and unknown now:
        # it is removed, and `.ready` (which promised a DPI) with it; the ARN stays.
        if name == "DPI":
            self._not_ready(victim)
        if name == ".ready" and victim not in self.start_values:
            # a `.ready` counts, whoever made it
            self.start_values[victim] = (None, self.arn_left.pop(victim, None))
        record = self.registry.get(victim)
        assert record is not None
        if record.tty is None:
            self._not_ready(victim)  # never ready without a TTY
        self._sync_told_with_world()

    def _not_ready(self, container_id: str) -> None:
        values = self.start_values.pop(container_id, None)
        if values is not None and values[1] is not None:
            self.arn_left[container_id] = values[1]

    @precondition(lambda self: len(self.told) >= 2)
    @rule(data=st.data())
    def duplicate_tty_then_restart(self, data: st.DataObject) -> None:
        a, b = data.draw(
            st.lists(st.sampled_from(sorted(self.told)), min_size=2, max_size=2, unique=True)
        )
        record_a = self.registry.get(a)
        assert record_a is not None
        if record_a.tty is not None:
            tamper(self.root / b / "tty", str(record_a.tty))
        self._boot()
        run(self.lifecycle.adopt, self._infos())
        self._sync_told_with_world()

    # --- what must always hold ---------------------------------------------------------

    @invariant()
    def registry_matches_what_we_were_told(self) -> None:
        assert {r.id: r.host_port for r in self.registry.records()} == self.told
        for container_id, port in self.told.items():
            assert self.registry.by_host_port(port) is self.registry.get(container_id)

    @invariant()
    def ttys_are_unique_and_accounted_for(self) -> None:
        ttys = [r.tty for r in self.registry.records() if r.tty is not None]
        assert len(ttys) == len(set(ttys))
        assert all(FIRST_TTY <= t <= LAST_TTY for t in ttys)
        assert set(ttys) == self.registry.tty_pool.held
        waiting = [r for r in self.registry.records() if r.tty is None and not r.ready]
        if waiting:
            assert self.registry.free_ttys == 0

    @invariant()
    def directories_match_live_containers(self) -> None:
        on_disk = sorted(os.listdir(self.root)) if self.root.exists() else []
        assert on_disk == sorted(self.told)
        for record in self.registry.records():
            files = dir_files(self.root / record.id)  # checks modes, no trailing newline
            expected = {"hostPort_for_my_32262_tcp": str(record.host_port)}
            if record.tty is not None:
                expected["tty"] = str(record.tty)
            if record.id in self.start_values:
                dpi, arn = self.start_values[record.id]
                assert (record.dpi, record.container_arn, record.ready) == (dpi, arn, True)
                expected[".ready"] = ".ready"
                if dpi is not None:
                    expected["DPI"] = str(dpi)
                if arn is not None:
                    expected["ContainerARN"] = arn
            else:
                assert not record.ready
                assert record.container_arn == self.arn_left.get(record.id)
                if record.id in self.arn_left:
                    expected["ContainerARN"] = self.arn_left[record.id]
            assert files == expected


async def test_lifecycle_state_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fractal_hostd.safefs.os.fsync", Disk.fsync)
    # Real time here: retries every millisecond instead of from 0.1 s.
    monkeypatch.setattr("fractal_hostd.containers.lifecycle.RETRY_FIRST_DELAY", 0.001)
    monkeypatch.setattr("fractal_hostd.containers.lifecycle.RETRY_MAX_DELAY", 0.002)
    async with trio.open_nursery() as nursery:
        Disk.writers = nursery
        try:
            await trio.to_thread.run_sync(
                functools.partial(
                    run_state_machine_as_test,
                    LifecycleMachine,
                    settings=settings(
                        max_examples=100,
                        stateful_step_count=50,
                        deadline=None,
                        suppress_health_check=[HealthCheck.too_slow],
                    ),
                )
            )
        finally:
            Disk.writers = None
            nursery.cancel_scope.cancel()
