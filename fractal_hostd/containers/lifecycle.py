"""What happens to a managed container's resources as Docker reports it running or gone.

The Docker event stream calls `on_running`/`on_gone` (and `adopt` once, then `reconcile`
after every reconnect); the API calls `set_start_values`. All of it runs in one trio
thread, and every step that touches the registry, the TTY pool and the files is plain
synchronous code: no other task can run in the middle of one. The only awaits are the
per-container lock and the on_gone hook (cloud-storage unmount). The lock serialises the
steps of one container, so a die that arrives while its hook or an API write is waiting
cannot leave a directory behind, and a quick restart of the same id waits until the old
incarnation's directory is gone before it writes the new one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from fractal_hostd.containers.adoption import plan_adoption
from fractal_hostd.containers.info import ContainerInfo, is_container_id
from fractal_hostd.containers.mapping import (
    MappingDir,
    is_valid_arn,
    is_valid_dpi,
    list_mapping_entries,
)
from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry

logger = logging.getLogger(__name__)

GoneHook = Callable[[ContainerRecord], Awaitable[None]]


class ContainerUnknown(Exception):
    """No live managed container has this host port (the API answers 406)."""

    def __init__(self, host_port: int) -> None:
        super().__init__(f"no container with host port {host_port}")
        self.host_port = host_port


@dataclass
class _LockSlot:
    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0


class ContainerLifecycle:
    def __init__(
        self,
        *,
        mappings_dir: Path,
        registry: ContainerRegistry,
        on_gone: GoneHook | None = None,
    ) -> None:
        self._mappings_dir = mappings_dir
        self._registry = registry
        self._pool = registry.tty_pool
        self._on_gone_hook = on_gone
        self._locks: dict[str, _LockSlot] = {}

    async def adopt(self, running: Sequence[ContainerInfo]) -> None:
        """Start-up (contract §8): keep the TTY and files of every running managed container
        with a valid directory, give fresh ones to the others, remove all other directories."""
        await trio.lowlevel.checkpoint()
        if self._registry.records():
            raise RuntimeError("adopt() is for start-up; use reconcile() afterwards")
        plan = plan_adoption(self._mappings_dir, _live_managed(running))
        for container_id in plan.remove:
            MappingDir(self._mappings_dir, container_id).remove()
        # Claim every kept TTY before handing out any new one.
        for record in [*plan.keep, *plan.rewrite]:
            if record.tty is not None and not self._pool.claim(record.tty):
                raise AssertionError("adoption plan holds a TTY twice")
        for record in plan.keep:
            self._registry.add(record)
        for record in plan.rewrite:
            self._write_running(record)
            self._registry.add(record)
        for record in plan.new_tty:
            self._give_tty(record)
            self._write_running(record)
            self._registry.add(record)
        for info in plan.fresh:
            self._start(info)
        logger.info(
            "adopted %d containers, %d got fresh resources, %d directories removed "
            "(stale or not adoptable)",
            len(plan.keep) + len(plan.rewrite) + len(plan.new_tty),
            len(plan.fresh),
            len(plan.remove),
        )

    async def on_running(self, info: ContainerInfo) -> None:
        """A container inspect saw (idempotent). One inspect found not running is gone."""
        if not info.running:
            # Not managed may only mean its random port is no longer shown: gone either way.
            await self.on_gone(info.id)
            return
        if not is_container_id(info.id) or info.host_port is None:
            await trio.lowlevel.checkpoint()
            return
        async with self._locked(info.id):
            record = self._registry.get(info.id)
            if record is None:
                self._start(info)
            elif record.host_port != info.host_port:
                # Only a missed die+start can change a live container's port.
                self._registry.move_port(record, info.host_port)
                self._write_running(record)

    async def on_gone(self, container_id: str) -> None:
        """Die or destroy (idempotent, unknown ids fine): unmount cloud storage, remove the
        directory, free the TTY."""
        if not is_container_id(container_id):
            await trio.lowlevel.checkpoint()
            return
        async with self._locked(container_id):
            record = self._registry.remove(container_id)
            if record is None:
                # Never seen (or already cleaned up): nothing to unmount, but make sure no
                # directory survives, whatever left it.
                MappingDir(self._mappings_dir, container_id).remove()
                return
            try:
                if self._on_gone_hook is not None:
                    await self._on_gone_hook(record)
            except Exception:
                logger.exception("on_gone hook failed", extra={"container_id": container_id})
            finally:
                # Synchronous, so it completes even when we are being cancelled.
                self._release(record)

    async def reconcile(
        self, running: Sequence[ContainerInfo], *, leave_alone: Container[str] = frozenset()
    ) -> None:
        """`running` is the full truth: every record not in it is gone, every running
        managed container in it is registered, every other directory is removed.

        Except for the ids in `leave_alone`: events newer than `running` arrived for them
        (the event stream reconciles alongside its events) and decide alone. It is read at
        each step, so the caller may add to it while this runs."""
        live = _live_managed(running)
        for record in self._registry.records():
            if record.id not in live and record.id not in leave_alone:
                await self.on_gone(record.id)
        for info in live.values():
            if info.id not in leave_alone:
                await self.on_running(info)
        self._remove_orphan_dirs()

    def known_host_ports(self) -> dict[str, int]:
        """Id → host port of every registered container: a reconcile confirms with an
        inspect only the containers Docker's listing shows otherwise."""
        return {record.id: record.host_port for record in self._registry.records()}

    async def set_start_values(
        self, host_port: int, *, dpi: int, container_arn: str | None = None
    ) -> ContainerRecord:
        """Write DPI (and ContainerARN) then ``.ready``; idempotent, the last value wins.
        An empty ARN counts as none. Raises ContainerUnknown when no live container has the
        port, ValueError for a bad dpi or ARN, OSError when the files cannot be written."""
        if container_arn == "":
            container_arn = None  # the webserver's way of saying "no ARN"
        if not is_valid_dpi(dpi):
            raise ValueError("dpi must be an integer from 1 to 10000")
        if container_arn is not None and not is_valid_arn(container_arn):
            raise ValueError("container_ARN must be one printable line")
        record = self._registry.by_host_port(host_port)
        if record is None:
            await trio.lowlevel.checkpoint()
            raise ContainerUnknown(host_port)
        async with self._locked(record.id):
            # The lock may have waited for a die of this very container: look again.
            if self._registry.get(record.id) is not record or record.host_port != host_port:
                raise ContainerUnknown(host_port)
            MappingDir(self._mappings_dir, record.id).write_start_values(dpi, container_arn)
            record.dpi = dpi
            if container_arn is not None:
                record.container_arn = container_arn
            record.ready = True
            return record

    def _start(self, info: ContainerInfo) -> None:
        assert info.host_port is not None
        record = ContainerRecord(id=info.id, host_port=info.host_port, tty=None)
        self._give_tty(record)
        # Files first: whoever wakes on the registry (the API) may write into the directory.
        self._write_running(record)
        self._registry.add(record)
        logger.info(
            "container running: host port %d, tty %s",
            record.host_port,
            record.tty,
            extra={"container_id": record.id},
        )

    def _give_tty(self, record: ContainerRecord) -> None:
        record.tty = self._pool.assign()
        if record.tty is None:
            # Error level reaches Sentry; the container stays unassigned, the service runs on.
            logger.error(
                "no free TTY: container left without one", extra={"container_id": record.id}
            )

    def _write_running(self, record: ContainerRecord) -> None:
        mapping = MappingDir(self._mappings_dir, record.id)
        try:
            mapping.write_running(record.host_port, record.tty)
            if record.ready:
                mapping.rewrite_ready()
        except OSError:
            logger.exception("cannot write mapping directory", extra={"container_id": record.id})

    def _release(self, record: ContainerRecord) -> None:
        try:
            MappingDir(self._mappings_dir, record.id).remove()
        except OSError:
            logger.exception("cannot remove mapping directory", extra={"container_id": record.id})
        if record.tty is not None:
            self._pool.release(record.tty)
            self._hand_tty_to_waiting()
        logger.info("container gone", extra={"container_id": record.id})

    def _hand_tty_to_waiting(self) -> None:
        # A container that started while the pool was exhausted gets the freed TTY, as long
        # as it is not ready yet: its `tty` file must still come before `.ready`.
        for record in self._registry.records():
            if record.tty is None and not record.ready:
                self._give_tty(record)
                self._write_running(record)
                return

    def _remove_orphan_dirs(self) -> None:
        for container_id in _mapping_ids(self._mappings_dir):
            if self._registry.get(container_id) is None and container_id not in self._locks:
                MappingDir(self._mappings_dir, container_id).remove()

    @asynccontextmanager
    async def _locked(self, container_id: str) -> AsyncIterator[None]:
        slot = self._locks.setdefault(container_id, _LockSlot())
        slot.users += 1
        try:
            async with slot.lock:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._locks[container_id]


def _live_managed(running: Sequence[ContainerInfo]) -> dict[str, ContainerInfo]:
    return {
        info.id: info
        for info in running
        if info.running and info.host_port is not None and is_container_id(info.id)
    }


def _mapping_ids(mappings_dir: Path) -> list[str]:
    return [name for name in list_mapping_entries(mappings_dir) if is_container_id(name)]
