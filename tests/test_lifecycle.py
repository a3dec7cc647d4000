"""ContainerLifecycle: start, die, start values, adoption (contract §8), reconcile, and the
interleavings trio allows between the Docker event stream and API requests.

Rules: everything on a tmp dir; no sleeps on the real clock; fail_after around waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from fractal_hostd.api.slots import RequestSlots, SlottedApp
from fractal_hostd.containers import (
    ContainerInfo,
    ContainerLifecycle,
    ContainerRecord,
    ContainerRegistry,
    ContainerUnknown,
    GoneHook,
)
from fractal_hostd.containers.lifecycle import ContainerWithoutTty
from fractal_hostd.containers.mapping import MappingDir, MappingFiles
from tests.containers_fixtures import cid, dir_files, running

LIFECYCLE_LOGGER = "fractal_hostd.containers.lifecycle"
T = TypeVar("T")


class Host:
    """One service incarnation on a mappings directory; `restart()` makes the next one."""

    def __init__(self, root: Path, hook: GoneHook | None = None) -> None:
        self.root = root
        self.gone: list[str] = []
        self.hook = hook
        self.registry = ContainerRegistry()
        self.lifecycle = ContainerLifecycle(
            mappings_dir=root, registry=self.registry, on_gone=self._on_gone
        )

    async def _on_gone(self, record: ContainerRecord) -> None:
        self.gone.append(record.id)
        if self.hook is not None:
            await self.hook(record)

    def restart(self) -> Host:
        return Host(self.root)

    def files(self, n: int) -> dict[str, str]:
        return dir_files(self.root / cid(n))

    def ttys(self) -> dict[str, int | None]:
        return {r.id: r.tty for r in self.registry.records()}


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path / "containerResourceMappings")


async def test_running_writes_port_and_tty(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    assert host.files(1) == {"hostPort_for_my_32262_tcp": "40001", "tty": "10"}
    record = host.registry.by_host_port(40001)
    assert record == ContainerRecord(id=cid(1), host_port=40001, tty=10)
    await host.lifecycle.on_running(running(2, 40002))
    assert host.files(2)["tty"] == "11"


async def test_second_start_does_nothing(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.set_start_values(40001, dpi=96)
    before = host.files(1)
    await host.lifecycle.on_running(running(1, 40001))
    assert host.files(1) == before
    assert host.registry.free_ttys == 53


async def test_unmanaged_and_bad_ids_are_ignored(host: Host) -> None:
    await host.lifecycle.on_running(ContainerInfo(cid(1), None, True))
    await host.lifecycle.on_running(ContainerInfo("", 40001, True))
    await host.lifecycle.on_gone("../..")
    assert host.registry.records() == []
    assert not host.root.exists()


async def test_start_seen_not_running_is_gone(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.on_running(ContainerInfo(cid(1), 40001, running=False))
    assert host.registry.records() == []
    assert host.gone == [cid(1)]
    # A "-p 32262" container that stopped no longer shows its port: gone all the same.
    await host.lifecycle.on_running(running(2, 40002))
    await host.lifecycle.on_running(ContainerInfo(cid(2), None, running=False))
    assert host.gone == [cid(1), cid(2)]
    assert not (host.root / cid(2)).exists()


async def test_gone_unmounts_removes_dir_frees_tty_once(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.on_gone(cid(1))
    await host.lifecycle.on_gone(cid(1))  # destroy after die
    assert host.gone == [cid(1)]
    assert not (host.root / cid(1)).exists()
    assert host.registry.free_ttys == 54
    await host.lifecycle.on_running(running(2, 40002))
    assert host.files(2)["tty"] == "10"


async def test_die_for_unknown_id_is_a_no_op(host: Host) -> None:
    await host.lifecycle.on_gone(cid(7))
    assert host.gone == []


async def test_hook_failure_is_logged_and_cleanup_still_happens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(record: ContainerRecord) -> None:
        raise RuntimeError("rclone exploded")

    host = Host(tmp_path, hook=broken)
    await host.lifecycle.on_running(running(1, 40001))
    with caplog.at_level(logging.ERROR, LIFECYCLE_LOGGER):
        await host.lifecycle.on_gone(cid(1))
    assert "on_gone hook failed" in caplog.text
    assert not (tmp_path / cid(1)).exists()
    assert host.registry.free_ttys == 54


async def test_cancelled_during_hook_still_cleans_up(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async def slow(record: ContainerRecord) -> None:
        await trio.sleep_forever()

    host = Host(tmp_path, hook=slow)
    await host.lifecycle.on_running(running(1, 40001))
    with trio.move_on_after(5):
        await host.lifecycle.on_gone(cid(1))
    assert not (tmp_path / cid(1)).exists()
    assert host.registry.free_ttys == 54
    assert host.registry.records() == []


async def test_start_values_are_written_then_ready(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    record = await host.lifecycle.set_start_values(40001, dpi=96, container_arn="arn:a")
    assert (record.dpi, record.container_arn, record.ready) == (96, "arn:a", True)
    assert host.files(1) == {
        ".ready": ".ready",
        "ContainerARN": "arn:a",
        "DPI": "96",
        "hostPort_for_my_32262_tcp": "40001",
        "tty": "10",
    }
    await host.lifecycle.set_start_values(40001, dpi=144)  # set_container_dpi: last value wins
    assert host.files(1)["DPI"] == "144"
    assert host.files(1)["ContainerARN"] == "arn:a"


class GatedWrites:
    """A `run_blocking` that counts the mapping writes and holds the first one at a gate
    until released, so that requests can pile up behind it."""

    def __init__(self) -> None:
        self.writes = 0
        self.gate: trio.Event | None = None

    async def __call__(self, fn: Callable[[], T]) -> T:
        if getattr(getattr(fn, "func", None), "__name__", "") == "write":
            self.writes += 1
            if self.gate is not None:
                gate, self.gate = self.gate, None
                await gate.wait()
        return fn()


async def gated_lifecycle(tmp_path: Path) -> tuple[GatedWrites, ContainerLifecycle, trio.Event]:
    """A lifecycle with container 1 on port 40001 whose next mapping write waits at the
    returned gate (writes counted from 0)."""
    runner = GatedWrites()
    lifecycle = ContainerLifecycle(
        mappings_dir=tmp_path, registry=ContainerRegistry(), run_blocking=runner
    )
    await lifecycle.on_running(running(1, 40001))
    first_gate = trio.Event()
    runner.writes, runner.gate = 0, first_gate
    return runner, lifecycle, first_gate


async def crowd_behind_a_gated_write(
    runner: GatedWrites,
    first_gate: trio.Event,
    request: Callable[[int], Awaitable[None]],
    dpis: range,
) -> None:
    """The first DPI's write waits at its gate while the others arrive one by one; then the
    gate opens and every request finishes."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, dpis[0])
            await trio.testing.wait_all_tasks_blocked()
            assert runner.gate is None  # the first write waits at its gate
            for dpi in dpis[1:]:
                nursery.start_soon(request, dpi)
                await trio.testing.wait_all_tasks_blocked()
            first_gate.set()


async def test_concurrent_start_values_share_one_write_and_the_last_value_wins(
    tmp_path: Path,
) -> None:
    # Requests that queue behind a write of their container are written together by the
    # next one: one set of fsyncs for the crowd, each answered once its values are durable.
    runner, lifecycle, first_gate = await gated_lifecycle(tmp_path)
    answered: list[int] = []

    async def request(dpi: int) -> None:
        await lifecycle.set_start_values(40001, dpi=dpi)
        # Answered only once its value (or a later one: they rise) is on disk.
        assert int(dir_files(tmp_path / cid(1))["DPI"]) >= dpi
        answered.append(dpi)

    await crowd_behind_a_gated_write(runner, first_gate, request, range(100, 110))
    assert sorted(answered) == list(range(100, 110))
    assert runner.writes == 2
    assert dir_files(tmp_path / cid(1))["DPI"] == "109"
    assert dir_files(tmp_path / cid(1))[".ready"] == ".ready"


async def test_a_die_between_setting_and_writing_start_values_answers_unknown(
    tmp_path: Path,
) -> None:
    # B sets its values while A's write runs, the die queued behind B takes the container
    # before B's write: B answers "unknown container" and no directory comes back.
    _, lifecycle, first_gate = await gated_lifecycle(tmp_path)
    outcome: dict[str, object] = {}

    async def request(name: str, dpi: int) -> None:
        try:
            outcome[name] = (await lifecycle.set_start_values(40001, dpi=dpi)).dpi
        except ContainerUnknown as exc:
            outcome[name] = exc

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "A", 100)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(request, "B", 101)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lifecycle.on_gone, cid(1))
            await trio.testing.wait_all_tasks_blocked()
            first_gate.set()
    assert outcome["A"] in (100, 101)
    assert isinstance(outcome["B"], ContainerUnknown)
    assert not (tmp_path / cid(1)).exists()


async def test_empty_arn_counts_as_none(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.set_start_values(40001, dpi=96, container_arn="arn:a")
    record = await host.lifecycle.set_start_values(40001, dpi=96, container_arn="")
    assert record.container_arn == "arn:a"
    assert host.files(1)["ContainerARN"] == "arn:a"


async def test_start_values_for_unknown_or_dead_port(host: Host) -> None:
    with pytest.raises(ContainerUnknown) as info:
        await host.lifecycle.set_start_values(40001, dpi=96)
    assert info.value.host_port == 40001
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.on_gone(cid(1))
    with pytest.raises(ContainerUnknown):
        await host.lifecycle.set_start_values(40001, dpi=96)
    assert not (host.root / cid(1)).exists()


@pytest.mark.parametrize(("dpi", "arn"), [(0, None), (10_001, None), (96, "a\nb"), (96, "\x00")])
async def test_bad_start_values_are_refused(host: Host, dpi: int, arn: str | None) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    with pytest.raises(ValueError):  # noqa: PT011 - the message is for the API's 400
        await host.lifecycle.set_start_values(40001, dpi=dpi, container_arn=arn)
    assert "DPI" not in host.files(1)


async def test_exhaustion_leaves_container_unassigned_and_reports(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    for n in range(54):
        await host.lifecycle.on_running(running(n, 40000 + n))
    with caplog.at_level(logging.ERROR, LIFECYCLE_LOGGER):
        await host.lifecycle.on_running(running(100, 41000))
        await host.lifecycle.on_running(running(101, 41001))
    assert [r.message for r in caplog.records].count("no free TTY: container left without one") == 2
    assert host.files(100) == {"hostPort_for_my_32262_tcp": "41000"}
    # Never ready without a TTY: the start values are refused, nothing is written.
    with pytest.raises(ContainerWithoutTty, match="has no TTY"):
        await host.lifecycle.set_start_values(41000, dpi=96)
    assert host.files(100) == {"hostPort_for_my_32262_tcp": "41000"}
    record = host.registry.get(cid(100))
    assert record is not None
    assert (record.dpi, record.ready) == (None, False)
    # The next freed TTY goes to the first waiting one, which can then be made ready.
    await host.lifecycle.on_gone(cid(5))
    assert host.ttys()[cid(100)] == 15
    assert host.ttys()[cid(101)] is None
    await host.lifecycle.set_start_values(41000, dpi=96)
    assert host.files(100) == {
        "hostPort_for_my_32262_tcp": "41000",
        "tty": "15",
        "DPI": "96",
        ".ready": ".ready",
    }


async def test_api_waiter_finds_files_on_disk_when_it_wakes(host: Host) -> None:
    seen: list[dict[str, str]] = []

    async def api() -> None:
        record = await host.registry.wait_for_host_port(40001)
        seen.append(dir_files(host.root / record.id))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(api)
            await trio.testing.wait_all_tasks_blocked()
            await host.lifecycle.on_running(running(1, 40001))
    assert seen == [{"hostPort_for_my_32262_tcp": "40001", "tty": "10"}]


async def test_die_while_start_values_wait_leaves_no_directory(tmp_path: Path) -> None:
    """An API write arriving while the container's die runs the unmount hook must give up
    (406) rather than recreate the directory."""
    unmounting = trio.Event()
    finish_unmount = trio.Event()

    async def hook(record: ContainerRecord) -> None:
        unmounting.set()
        await finish_unmount.wait()

    host = Host(tmp_path, hook=hook)
    await host.lifecycle.on_running(running(1, 40001))
    outcome: list[BaseException | ContainerRecord] = []

    async def api_write() -> None:
        try:
            outcome.append(await host.lifecycle.set_start_values(40001, dpi=96))
        except ContainerUnknown as exc:
            outcome.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.lifecycle.on_gone, cid(1))
            await unmounting.wait()
            nursery.start_soon(api_write)
            await trio.testing.wait_all_tasks_blocked()
            finish_unmount.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ContainerUnknown)
    assert not (tmp_path / cid(1)).exists()


async def test_write_racing_a_die_never_leaves_a_directory(tmp_path: Path) -> None:
    """API write and die started together, in both orders: either the write wins and the die
    removes everything after it, or the write (after waiting for the die to finish with the
    container) sees it gone."""
    for api_first in (True, False):
        host = Host(tmp_path / str(api_first))
        await host.lifecycle.on_running(running(1, 40001))

        async def api(host: Host = host) -> None:
            with contextlib.suppress(ContainerUnknown):
                await host.lifecycle.set_start_values(40001, dpi=96)

        async def die(host: Host = host) -> None:
            await host.lifecycle.on_gone(cid(1))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for task in (api, die) if api_first else (die, api):
                    nursery.start_soon(task)
        assert not (host.root / cid(1)).exists()
        assert host.registry.free_ttys == 54


async def test_quick_restart_of_same_id_waits_for_old_cleanup(tmp_path: Path) -> None:
    finish_unmount = trio.Event()

    async def hook(record: ContainerRecord) -> None:
        await finish_unmount.wait()

    host = Host(tmp_path, hook=hook)
    await host.lifecycle.on_running(running(1, 40001))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.lifecycle.on_gone, cid(1))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(host.lifecycle.on_running, running(1, 40009))
            await trio.testing.wait_all_tasks_blocked()
            finish_unmount.set()
    assert host.files(1) == {"hostPort_for_my_32262_tcp": "40009", "tty": "10"}
    assert host.ttys() == {cid(1): 10}
    assert host.registry.free_ttys == 53


# --- adoption after a restart (contract §8) -------------------------------------------


async def test_restart_keeps_ttys_and_files(host: Host) -> None:
    for n in range(3):
        await host.lifecycle.on_running(running(n, 40000 + n))
    await host.lifecycle.on_gone(cid(0))  # tty 10 free, 11 and 12 held
    await host.lifecycle.set_start_values(40001, dpi=96, container_arn="arn:1")
    before = {n: host.files(n) for n in (1, 2)}

    new = host.restart()
    await new.lifecycle.adopt([running(1, 40001), running(2, 40002), running(3, 40003)])
    assert {n: new.files(n) for n in (1, 2)} == before
    assert new.ttys() == {cid(1): 11, cid(2): 12, cid(3): 10}
    adopted = new.registry.get(cid(1))
    assert adopted is not None
    assert (adopted.dpi, adopted.container_arn, adopted.ready) == (96, "arn:1", True)
    assert new.registry.free_ttys == 51


async def test_adopt_removes_dirs_of_gone_stopped_and_unmanaged(host: Host) -> None:
    for n in range(4):
        await host.lifecycle.on_running(running(n, 40000 + n))
    (host.root / "lost+found").mkdir()
    new = host.restart()
    await new.lifecycle.adopt(
        [
            running(0, 40000),
            ContainerInfo(cid(1), 40001, running=False),
            ContainerInfo(cid(2), None, running=True),
        ]
    )
    assert sorted(os.listdir(host.root)) == [cid(0), "lost+found"]  # not ours: left alone
    assert new.ttys() == {cid(0): 10}
    assert new.gone == []  # nothing was mounted by this incarnation


async def test_adopt_repairs_garbage_keeping_what_the_container_read(
    host: Host, caplog: pytest.LogCaptureFixture
) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.on_running(running(2, 40002))
    await host.lifecycle.set_start_values(40002, dpi=96, container_arn="arn:2")
    (host.root / cid(2) / "DPI").write_text("ninety-six")
    (host.root / cid(2) / "hostPort_for_my_32262_tcp").unlink()
    new = host.restart()
    with caplog.at_level(logging.WARNING):
        await new.lifecycle.adopt([running(1, 40001), running(2, 40002)])
    assert "mapping directory repaired: DPI holds garbage" in caplog.text
    # The TTY and ContainerARN stay (the container may have read them); the missing host
    # port file is written again. The garbage DPI is no value of ours and the value is
    # unknown: it goes, and `.ready`, which promised a DPI, with it (an error naming it).
    assert new.files(2) == {
        "hostPort_for_my_32262_tcp": "40002",
        "tty": "11",
        "ContainerARN": "arn:2",
    }
    assert new.registry.get(cid(2)) == ContainerRecord(
        id=cid(2), host_port=40002, tty=11, dpi=None, container_arn="arn:2", ready=False
    )
    assert "DPI in the mapping directory held no value of ours" in caplog.text
    # The next start values make it ready again.
    await new.lifecycle.set_start_values(40002, dpi=120)
    assert new.files(2)["DPI"] == "120"
    assert new.files(2)[".ready"] == ".ready"


async def test_adopt_never_keeps_a_duplicate_tty(host: Host) -> None:
    for n in range(3):
        await host.lifecycle.on_running(running(n, 40000 + n))
    await host.lifecycle.set_start_values(40002, dpi=96)
    (host.root / cid(0) / "tty").write_text("12")
    (host.root / cid(1) / "tty").write_text("12")  # three dirs claim tty 12
    new = host.restart()
    await new.lifecycle.adopt([running(n, 40000 + n) for n in range(3)])
    # The ready container (2) keeps it; the others get the lowest free ones.
    assert new.ttys() == {cid(2): 12, cid(0): 10, cid(1): 11}
    assert {n: new.files(n)["tty"] for n in range(3)} == {0: "10", 1: "11", 2: "12"}


async def test_adopt_reassigned_ready_container_rewrites_ready_last(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(2):
        await host.lifecycle.on_running(running(n, 40000 + n))
        await host.lifecycle.set_start_values(40000 + n, dpi=96)
    (host.root / cid(1) / "tty").write_text("10")
    steps: list[str] = []
    real_rename, real_unlink = os.rename, os.unlink

    def rename(src: str, dst: str, **kwargs: int) -> None:
        steps.append(f"write {dst}")
        real_rename(src, dst, **kwargs)

    def unlink(name: str, **kwargs: int) -> None:
        steps.append(f"remove {name}")
        real_unlink(name, **kwargs)

    monkeypatch.setattr("fractal_hostd.safefs.os.rename", rename)
    monkeypatch.setattr("fractal_hostd.safefs.os.unlink", unlink)
    new = host.restart()
    await new.lifecycle.adopt([running(n, 40000 + n) for n in range(2)])
    assert new.ttys() == {cid(0): 10, cid(1): 11}
    # `.ready` goes before the tty it vouches for is rewritten, and comes back last.
    assert steps == ["remove .ready", "write tty", "write .ready"]


async def test_adopt_gives_a_ready_container_without_tty_one_or_takes_ready_away(
    host: Host,
) -> None:
    # Directories left by an older version: ready, but no `tty` (53 lost it, 54 never had
    # one: the pool was exhausted when it started).
    for n in range(55):
        await host.lifecycle.on_running(running(n, 40000 + n))
    await host.lifecycle.set_start_values(40053, dpi=96)
    (host.root / cid(53) / "tty").unlink()
    for name, text in (("DPI", "96"), (".ready", ".ready")):
        (host.root / cid(54) / name).write_text(text)
        (host.root / cid(54) / name).chmod(0o644)
    new = host.restart()
    await new.lifecycle.adopt([running(n, 40000 + n) for n in range(55)])
    # The one free TTY (63) goes to 53; none is left for 54, whose .ready goes.
    assert new.ttys()[cid(53)] == 63
    assert new.files(53)["tty"] == "63"
    assert ".ready" in new.files(53)
    assert new.ttys()[cid(54)] is None
    assert new.files(54) == {"DPI": "96", "hostPort_for_my_32262_tcp": "40054"}
    record = new.registry.get(cid(54))
    assert record is not None
    assert not record.ready


async def test_adopt_gives_a_free_tty_to_a_waiting_unassigned_container(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    (host.root / cid(1) / "tty").unlink()  # as if the pool had been exhausted at its start
    new = host.restart()
    await new.lifecycle.adopt([running(1, 40001)])
    assert new.files(1) == {"hostPort_for_my_32262_tcp": "40001", "tty": "10"}


async def test_adopt_rewrites_a_changed_host_port_keeping_the_tty(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.on_running(running(2, 40002))
    new = host.restart()
    await new.lifecycle.adopt([running(2, 40777)])
    assert new.files(2) == {"hostPort_for_my_32262_tcp": "40777", "tty": "11"}
    assert new.registry.by_host_port(40777) is new.registry.get(cid(2))
    assert new.registry.by_host_port(40002) is None


async def test_adopt_is_for_start_up_only(host: Host) -> None:
    await host.lifecycle.adopt([running(1, 40001)])
    with pytest.raises(RuntimeError):
        await host.lifecycle.adopt([running(1, 40001)])


# --- reconcile after a reconnect ------------------------------------------------------


async def test_reconcile_applies_missed_events(host: Host) -> None:
    await host.lifecycle.adopt([])
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.on_running(running(2, 40002))
    MappingDir(host.root, cid(9)).write(MappingFiles(40009, 30))  # left behind by someone
    await host.lifecycle.reconcile(
        [running(2, 40002), running(3, 40003), ContainerInfo(cid(4), None, True)]
    )
    assert host.gone == [cid(1)]
    assert host.ttys() == {cid(2): 11, cid(3): 10}
    assert sorted(os.listdir(host.root)) == [cid(2), cid(3)]


async def test_a_missed_restart_that_moved_the_port_ends_the_old_ports_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # dockerd gives a restarted container with a random host port a new one; with its die and
    # start missed (stream down), the service sees the same id with another port. Its
    # cloud-storage mounts are its previous run's, under the old port: the gone hook must see
    # that run (old port) so they are unmounted, and the record keeps no mounted providers.
    ended: list[tuple[str, int, list[str]]] = []

    async def record_end(record: ContainerRecord) -> None:
        ended.append((record.id, record.host_port, list(record.cloud_storage)))

    caplog.set_level(logging.INFO, logger=LIFECYCLE_LOGGER)
    host = Host(tmp_path / "containerResourceMappings", hook=record_end)
    await host.lifecycle.on_running(running(1, 40001))
    record = host.registry.by_host_port(40001)
    assert record is not None
    record.cloud_storage.append("google_drive")  # what the mount route does

    await host.lifecycle.reconcile([running(1, 40002)])

    assert ended == [(cid(1), 40001, ["google_drive"])]
    assert "host port changed from 40001 to 40002" in caplog.text
    assert host.registry.by_host_port(40002) is record
    assert record.cloud_storage == []
    assert host.files(1)["hostPort_for_my_32262_tcp"] == "40002"
    assert host.files(1)["tty"] == "10"  # the TTY stays: contract §8


@pytest.mark.parametrize("name", ["DPI", "ContainerARN"])
async def test_adopt_removes_a_link_at_a_value_and_ready_with_it(
    host: Host, name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A link planted at DPI (or ContainerARN) before a restart: its value is unknown to the
    # new incarnation, and `.ready` promises one. The link goes (never followed), `.ready`
    # goes, the target outside is untouched; an error names the container.
    outside = tmp_path / "outside"
    outside.write_text("96")
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.set_start_values(40001, dpi=96, container_arn="arn:1")
    (host.root / cid(1) / name).unlink()
    (host.root / cid(1) / name).symlink_to(outside)
    new = host.restart()
    with caplog.at_level(logging.ERROR, logger=LIFECYCLE_LOGGER):
        await new.lifecycle.adopt([running(1, 40001)])

    files = sorted(os.listdir(host.root / cid(1)))
    assert name not in files
    assert ".ready" not in files
    assert outside.read_text() == "96"
    record = new.registry.get(cid(1))
    assert record is not None
    assert not record.ready
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [getattr(r, "container_id", None) for r in errors] == [cid(1)]


async def test_reconcile_replaces_a_link_at_a_known_value(host: Host, tmp_path: Path) -> None:
    # Without a restart the service knows the values it wrote: a link planted at DPI or
    # ContainerARN is replaced with them, `.ready` stays (the container is ready).
    outside = tmp_path / "outside"
    outside.write_text("keep me")
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.set_start_values(40001, dpi=96, container_arn="arn:1")
    for name in ("DPI", "ContainerARN", ".ready"):
        (host.root / cid(1) / name).unlink()
        (host.root / cid(1) / name).symlink_to(outside)

    await host.lifecycle.reconcile([running(1, 40001)])

    assert host.files(1) == {
        "hostPort_for_my_32262_tcp": "40001",
        "tty": "10",
        "DPI": "96",
        "ContainerARN": "arn:1",
        ".ready": ".ready",
    }
    assert outside.read_text() == "keep me"


async def test_reconcile_leaves_an_intact_directory_unwritten(host: Host) -> None:
    await host.lifecycle.on_running(running(1, 40001))
    await host.lifecycle.set_start_values(40001, dpi=96)
    before = os.stat(host.root / cid(1) / ".ready").st_ino
    await host.lifecycle.reconcile([running(1, 40001)])
    assert os.stat(host.root / cid(1) / ".ready").st_ino == before


async def test_a_starting_containers_write_holds_the_api(tmp_path: Path) -> None:
    """Its first files are written while the API waits (fractal_hostd/event_priority.py);
    start values sent through the API are not: that would hold the API for itself."""
    holding: list[bool] = []  # at each write
    lifecycle: ContainerLifecycle

    async def noting(fn: Callable[[], T]) -> T:
        owner = getattr(getattr(fn, "func", None), "__self__", None)
        if isinstance(owner, MappingDir):
            holding.append(lifecycle.priority.holding)
        await trio.lowlevel.checkpoint()
        return fn()

    lifecycle = ContainerLifecycle(
        mappings_dir=tmp_path / "m", registry=ContainerRegistry(), run_blocking=noting
    )
    await lifecycle.on_running(running(1, 40001))
    assert holding == [True]
    await lifecycle.set_start_values(40001, dpi=96)
    assert holding == [True, False]
    assert not lifecycle.priority.holding


async def test_start_values_through_the_api_share_a_write_with_one_request_slot(
    tmp_path: Path,
) -> None:
    """A set_container_dpi request gives its slot up while it waits for its container's
    write (fractal_hostd/event_priority.py `waiting`), so those behind it reach the lock and
    share the next write; holding the slot, each would have waited for the one before."""
    runner, lifecycle, first_gate = await gated_lifecycle(tmp_path)
    slots = RequestSlots(limit=1, lease=60.0)

    async def handler(scope: dict[str, int], receive: object, send: object) -> None:
        await lifecycle.set_start_values(40001, dpi=scope["dpi"])

    app = SlottedApp(handler, slots)  # type: ignore[arg-type]

    async def request(dpi: int) -> None:
        await app({"type": "http", "dpi": dpi}, None, None)  # type: ignore[arg-type]

    await crowd_behind_a_gated_write(runner, first_gate, request, range(100, 105))
    assert runner.writes == 2
    assert dir_files(tmp_path / cid(1))["DPI"] == "104"
