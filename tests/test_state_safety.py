"""Container state that survives what containers and disks do to it (issue 10 items 1-3, 7):
links planted under FRACTAL_ROOT, unexpected entries, failed writes retried with backoff,
an unwritable FRACTAL_ROOT, start values for a container without a TTY.

Rules: tmp dirs only; fault injection by monkeypatching os functions in safefs; backoff in
virtual time (autojump_clock) with inline file I/O; the real tmpfs and read-only bind tests
mount as root (skipped where mount is not permitted) and bound every wait with fail_after.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client import generate_latest

from fractal_hostd.containers import ContainerLifecycle, ContainerRegistry
from fractal_hostd.containers.lifecycle import (
    RETRY_MAX_DELAY,
    MappingsUnwritable,
    run_inline,
)
from tests.api_fixtures import AUTH, container_id, make_api
from tests.containers_fixtures import cid, dir_files, running
from tests.mount_fixtures import read_only_root, small_tmpfs

__all__ = ["read_only_root", "small_tmpfs"]  # fixtures

PORT = 40001


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    victim = tmp_path / "host-files"
    (victim / "dir").mkdir(parents=True)
    (victim / "shadow").write_text("root:secret")
    return victim


def untouched(outside: Path) -> bool:
    return (
        sorted(os.listdir(outside)) == ["dir", "shadow"]
        and os.listdir(outside / "dir") == []
        and (outside / "shadow").read_text() == "root:secret"
    )


def lifecycle_on(mappings: Path, *, inline: bool = True) -> ContainerLifecycle:
    registry = ContainerRegistry()
    if inline:
        return ContainerLifecycle(mappings_dir=mappings, registry=registry, run_blocking=run_inline)
    return ContainerLifecycle(mappings_dir=mappings, registry=registry)


@asynccontextmanager
async def file_writer_running(lifecycle: ContainerLifecycle) -> AsyncIterator[None]:
    """The lifecycle's file-writer (retries of failed writes) runs for the block."""
    async with trio.open_nursery() as nursery:
        await nursery.start(lifecycle.run_file_writer)
        yield
        nursery.cancel_scope.cancel()


class DiskFull:
    """os.fsync in safefs raising ENOSPC (or another errno) while `failing`; notes when."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, code: int = errno.ENOSPC) -> None:
        self.failing = True
        self.failed_at: list[float] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            if self.failing:
                self.failed_at.append(trio.current_time())
                raise OSError(code, os.strerror(code))
            real(fd)

        monkeypatch.setattr("fractal_hostd.safefs.os.fsync", fsync)


@asynccontextmanager
async def started_on_a_full_disk(
    mappings: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[ContainerLifecycle, DiskFull]]:
    """Container 1 started while every fsync fails: its files wait in the running file-writer."""
    lifecycle = lifecycle_on(mappings)
    async with file_writer_running(lifecycle):
        disk = DiskFull(monkeypatch)
        await lifecycle.on_running(running(1, PORT))
        yield lifecycle, disk


# --- item 1: links planted at every name the service touches ---------------------------


async def test_a_link_at_the_old_temporary_name_is_never_followed(
    tmp_path: Path, outside: Path
) -> None:
    # The reproduction of issue 10: `.DPI.tmp` -> a host file, then PUT /set_container_dpi.
    api = make_api(tmp_path)
    await api.add_container(PORT)
    api.mapping_file(PORT, ".DPI.tmp").symlink_to(outside / "shadow")
    api.mapping_file(PORT, ".ready.tmp").symlink_to(outside / "shadow")
    answer = await api.app.test_client().put(
        "/set_container_dpi", json={"host_port": PORT, "dpi": 96}, headers=AUTH
    )
    assert answer.status_code == 200
    assert api.mapping_file(PORT, "DPI").read_text() == "96"
    assert api.mapping_file(PORT, ".ready").read_text() == ".ready"
    assert untouched(outside)


async def test_links_at_the_value_names_are_replaced_not_followed(
    tmp_path: Path, outside: Path
) -> None:
    api = make_api(tmp_path)
    await api.add_container(PORT)
    for name in ("DPI", "ContainerARN", ".ready"):
        api.mapping_file(PORT, name).symlink_to(outside / "shadow")
    answer = await api.app.test_client().put(
        "/set_container_start_values",
        json={"host_port": PORT, "dpi": 96, "container_ARN": "arn:1"},
        headers=AUTH,
    )
    assert answer.status_code == 200
    files = dir_files(api.mappings_dir / container_id(PORT))
    assert (files["DPI"], files["ContainerARN"], files[".ready"]) == ("96", "arn:1", ".ready")
    assert untouched(outside)


async def test_a_container_directory_replaced_by_a_link(tmp_path: Path, outside: Path) -> None:
    mappings = tmp_path / "containerResourceMappings"
    lifecycle = lifecycle_on(mappings)
    await lifecycle.on_running(running(1, PORT))
    directory = mappings / cid(1)
    for name in os.listdir(directory):
        os.unlink(directory / name)
    directory.rmdir()
    directory.symlink_to(outside / "dir")
    # A write replaces the link by a directory of ours...
    await lifecycle.set_start_values(PORT, dpi=96)
    assert not directory.is_symlink()
    assert dir_files(directory)["DPI"] == "96"
    assert untouched(outside)
    # ...and a removal unlinks a link without going through it.
    for name in os.listdir(directory):
        os.unlink(directory / name)
    directory.rmdir()
    directory.symlink_to(outside / "dir")
    (outside / "dir" / "tty").write_text("10")
    await lifecycle.on_gone(cid(1))
    assert not os.path.lexists(directory)
    assert (outside / "dir" / "tty").read_text() == "10"


async def test_the_mappings_directory_itself_replaced_by_a_link(
    tmp_path: Path, outside: Path
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    mappings.symlink_to(outside / "dir")
    (outside / "dir" / cid(7)).mkdir()  # would be "stale" and removed if followed
    lifecycle = lifecycle_on(mappings)
    await lifecycle.adopt([running(1, PORT)])
    assert mappings.is_dir()
    assert not mappings.is_symlink()
    assert sorted(os.listdir(mappings)) == [cid(1)]
    assert os.listdir(outside / "dir") == [cid(7)]


# --- item 2: unexpected entries, at start-up and later ---------------------------------


async def test_adoption_survives_files_and_links_named_like_container_ids(
    tmp_path: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    mappings.mkdir()
    (mappings / cid(1)).write_text("a file where a live container's directory belongs")
    (mappings / cid(2)).symlink_to(outside / "dir")  # live container
    (mappings / cid(3)).write_text("a file of a gone container")
    (mappings / cid(4)).symlink_to(outside / "shadow")  # gone container
    (mappings / "lost+found").write_text("not ours")
    (mappings / cid(5)).mkdir()
    (mappings / cid(5) / "tty").write_text("ten")
    (mappings / cid(5) / "hostPort_for_my_32262_tcp").write_text("\x00\x01")
    lifecycle = lifecycle_on(mappings)
    await lifecycle.adopt([running(1, 40001), running(2, 40002), running(5, 40005)])
    assert sorted(os.listdir(mappings)) == sorted([cid(1), cid(2), cid(5), "lost+found"])
    # 5 is adopted (its garbage repaired) before 1 and 2 start afresh.
    assert dir_files(mappings / cid(5)) == {"hostPort_for_my_32262_tcp": "40005", "tty": "10"}
    assert dir_files(mappings / cid(1)) == {"hostPort_for_my_32262_tcp": "40001", "tty": "11"}
    assert dir_files(mappings / cid(2)) == {"hostPort_for_my_32262_tcp": "40002", "tty": "12"}
    assert "removing a file named like a container id" in caplog.text
    assert "removing a link named like a container id" in caplog.text
    assert untouched(outside)


async def test_start_up_replaces_a_file_where_the_mappings_directory_belongs(
    tmp_path: Path,
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    mappings.write_text("garbage")
    lifecycle = lifecycle_on(mappings)
    async with file_writer_running(lifecycle):
        await lifecycle.adopt([running(1, PORT)])
    assert dir_files(mappings / cid(1))["tty"] == "10"


async def test_reconcile_rewrites_a_live_directory_a_link_took_the_place_of(
    tmp_path: Path, outside: Path
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    lifecycle = lifecycle_on(mappings)
    await lifecycle.adopt([running(1, PORT)])
    for name in os.listdir(mappings / cid(1)):
        os.unlink(mappings / cid(1) / name)
    (mappings / cid(1)).rmdir()
    (mappings / cid(1)).symlink_to(outside / "dir")
    (mappings / cid(9)).write_text("stray")
    await lifecycle.reconcile([running(1, PORT)])
    assert sorted(os.listdir(mappings)) == [cid(1)]
    assert dir_files(mappings / cid(1)) == {"hostPort_for_my_32262_tcp": str(PORT), "tty": "10"}
    assert untouched(outside)


# --- item 3: failed writes are retried, in order, visibly -----------------------------


async def test_a_failed_write_is_retried_with_backoff_until_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    async with started_on_a_full_disk(mappings, monkeypatch) as (lifecycle, disk):
        record = lifecycle._registry.get(cid(1))
        assert record is not None
        assert record.files_pending
        assert lifecycle.pending_writes == 1
        await trio.sleep(12)
        gaps = [b - a for a, b in zip(disk.failed_at, disk.failed_at[1:], strict=False)]
        assert gaps[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
        assert max(gaps) == pytest.approx(RETRY_MAX_DELAY)
        assert not os.path.exists(mappings / cid(1) / "tty")
        disk.failing = False  # space comes back: written without any other event
        await trio.sleep(RETRY_MAX_DELAY)
        assert not record.files_pending
        assert lifecycle.pending_writes == 0
        assert dir_files(mappings / cid(1)) == {"hostPort_for_my_32262_tcp": str(PORT), "tty": "10"}


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EROFS])
async def test_start_values_that_fail_answer_406_and_land_later_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock, code: int
) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    directory = api.mappings_dir / container_id(PORT)
    ready_seen_with: list[set[str]] = []
    real_rename = os.rename

    def rename(src: str, dst: str, **fds: int) -> None:
        if dst == ".ready":
            ready_seen_with.append(set(os.listdir(directory)))
        real_rename(src, dst, **fds)

    monkeypatch.setattr("fractal_hostd.safefs.os.rename", rename)
    async with file_writer_running(api.lifecycle):
        disk = DiskFull(monkeypatch, code)
        await api.add_container(PORT)  # even hostPort/tty are not written yet
        answer = await client.put(
            "/set_container_dpi", json={"host_port": PORT, "dpi": 96}, headers=AUTH
        )
        assert answer.status_code == 406
        error = json.loads(await answer.get_data())["error"]
        assert os.strerror(code) in error
        assert "retrying" in error
        status = json.loads(await (await client.get("/status", headers=AUTH)).get_data())
        assert status["pending_file_writes"] == 1
        assert status["containers"][0]["files_pending"] is True
        metrics = generate_latest(api.metrics.registry).decode()
        assert "fractal_hostd_pending_file_writes 1.0" in metrics
        assert "fractal_hostd_ready_containers 0.0" in metrics  # not on disk yet
        assert not directory.exists() or ".ready" not in os.listdir(directory)
        await trio.sleep(1)
        disk.failing = False
        await trio.sleep(RETRY_MAX_DELAY)
        assert dir_files(directory) == {
            "hostPort_for_my_32262_tcp": str(PORT),
            "tty": "10",
            "DPI": "96",
            ".ready": ".ready",
        }
        status = json.loads(await (await client.get("/status", headers=AUTH)).get_data())
        assert status["pending_file_writes"] == 0
    # `.ready` came last, with tty and the host port already there.
    assert ready_seen_with
    assert all({"tty", "hostPort_for_my_32262_tcp", "DPI"} <= s for s in ready_seen_with)


async def test_a_pending_write_of_a_container_that_dies_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    async with started_on_a_full_disk(mappings, monkeypatch) as (lifecycle, disk):
        await lifecycle.on_gone(cid(1))
        disk.failing = False
        await trio.sleep(1)
        assert lifecycle.pending_writes == 0
        assert not (mappings / cid(1)).exists()


async def test_adoption_after_a_full_disk_keeps_dpi_arn_and_ready(tmp_path: Path) -> None:
    # What a full disk used to leave: `.ready` written, `tty` and the host port file lost.
    mappings = tmp_path / "containerResourceMappings"
    first = lifecycle_on(mappings)
    await first.on_running(running(1, PORT))
    await first.set_start_values(PORT, dpi=96, container_arn="arn:1")
    os.unlink(mappings / cid(1) / "tty")
    os.unlink(mappings / cid(1) / "hostPort_for_my_32262_tcp")
    second = lifecycle_on(mappings)
    await second.adopt([running(1, PORT)])
    assert dir_files(mappings / cid(1)) == {
        "hostPort_for_my_32262_tcp": str(PORT),
        "tty": "10",
        "DPI": "96",
        "ContainerARN": "arn:1",
        ".ready": ".ready",
    }


async def test_an_unwritable_root_at_start_up_is_fatal_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("fractal_hostd.safefs.os.fsync", read_only)
    lifecycle = lifecycle_on(tmp_path / "fractal" / "containerResourceMappings")
    with pytest.raises(MappingsUnwritable) as caught:
        await lifecycle.run_file_writer()  # raises before it would report started
    message = str(caught.value)
    assert message == f"cannot write in FRACTAL_ROOT={tmp_path / 'fractal'}: Read-only file system"


# --- item 7: no TTY, no start values ---------------------------------------------------


async def test_start_values_for_a_container_without_tty_are_406(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    for n in range(54):
        await api.add_container(41000 + n)
    await api.add_container(PORT)  # the pool is exhausted
    answer = await api.app.test_client().put(
        "/set_container_start_values", json={"host_port": PORT, "dpi": 96}, headers=AUTH
    )
    assert answer.status_code == 406
    body = json.loads(await answer.get_data())
    assert "has no TTY" in body["error"]
    assert sorted(os.listdir(api.mappings_dir / container_id(PORT))) == [
        "hostPort_for_my_32262_tcp"
    ]


# --- the real thing: a full tmpfs and a read-only bind (root only) --------------------


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError, match="No space left"):  # noqa: PT012 - write until full
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


async def test_a_full_tmpfs_is_retried_until_space_returns(small_tmpfs: Path) -> None:
    mappings = small_tmpfs / "containerResourceMappings"
    lifecycle = lifecycle_on(mappings, inline=False)  # real threads, real clock
    async with file_writer_running(lifecycle):
        filler = _fill(small_tmpfs)
        await lifecycle.on_running(running(1, PORT))
        record = lifecycle._registry.get(cid(1))
        assert record is not None
        assert record.files_pending
        assert not os.path.exists(mappings / cid(1) / "tty")
        filler.unlink()
        with trio.fail_after(20):
            while record.files_pending:
                await trio.sleep(0.05)
        assert dir_files(mappings / cid(1)) == {"hostPort_for_my_32262_tcp": str(PORT), "tty": "10"}


async def test_a_read_only_root_is_fatal_at_start_up(read_only_root: Path) -> None:
    lifecycle = lifecycle_on(read_only_root / "containerResourceMappings", inline=False)
    with pytest.raises(MappingsUnwritable, match="Read-only file system"):
        await lifecycle.run_file_writer()
