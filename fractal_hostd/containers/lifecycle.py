"""What happens to a managed container's resources as Docker reports it running or gone.

The Docker event stream calls `on_running`/`on_gone` (and `adopt` once, then `reconcile`
after every reconnect); the API calls `set_start_values`. The registry and the TTY pool are
changed by plain synchronous code, so no other task runs in the middle of a bookkeeping
step. File I/O (fsyncs) runs in a worker thread, so a slow disk never stalls the event loop.
A per-container lock serialises everything done for one container, which keeps its writes in
order, makes a die that arrives while a write or the on_gone hook (cloud-storage unmount) is
waiting wait its turn, and makes a quick restart of the same id wait until the old
incarnation's directory is gone before it writes the new one.

The record in the registry is the wanted state; `MappingDir.write` makes the disk match it.
A write that fails (disk full, I/O error, read-only file system) marks the record
`files_pending` and is retried by `run_file_writer` with a bounded backoff, without waiting
for another event (contract §3).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Container, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from fractal_hostd.containers.adoption import plan_adoption
from fractal_hostd.containers.info import ContainerInfo, is_container_id
from fractal_hostd.containers.mapping import (
    MAX_DPI,
    MIN_DPI,
    MappingDir,
    MappingFiles,
    is_valid_arn,
    is_valid_dpi,
    list_mapping_entries,
    probe_writable,
    remove_entry,
)
from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry
from fractal_hostd.event_priority import EventPriority, waiting

logger = logging.getLogger(__name__)

# Called when a run of a container is over (it died, or a missed restart moved its port):
# the record holds the host port of that run.
GoneHook = Callable[[ContainerRecord], Awaitable[None]]
T = TypeVar("T")


class BlockingRunner(Protocol):
    """How the lifecycle runs its blocking file I/O."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


async def run_in_thread(fn: Callable[[], T]) -> T:
    """The default: a worker thread, so fsyncs never stall the event loop. Not abandoned on
    cancel: a write, once started, finishes before the caller sees the cancellation."""
    return await trio.to_thread.run_sync(fn)


async def run_inline(fn: Callable[[], T]) -> T:
    """In the event loop itself: for tests under trio's autojump clock, which would jump
    virtual time forward while a worker thread runs."""
    await trio.lowlevel.checkpoint()
    return fn()


# Backoff of a failed write: short first (a transient EIO), then at most every few seconds
# (a disk that fills up is emptied by a person, not by us).
RETRY_FIRST_DELAY = 0.1
RETRY_MAX_DELAY = 5.0


class ContainerUnknown(Exception):
    """No live managed container has this host port (the API answers 406)."""

    def __init__(self, host_port: int) -> None:
        super().__init__(f"no container with host port {host_port}")
        self.host_port = host_port


class ContainerWithoutTty(Exception):
    """The container got no TTY (pool exhausted): it can never be ready (the API answers 406)."""

    def __init__(self, host_port: int) -> None:
        super().__init__(
            f"container with host port {host_port} has no TTY (all TTYs are taken): "
            "start values not written"
        )
        self.host_port = host_port


class MappingsUnwritable(Exception):
    """FRACTAL_ROOT cannot be written at start-up: a fatal condition (contract §3)."""


@dataclass
class _LockSlot:
    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0


@dataclass
class _Retry:
    delay: float
    due: float


class ContainerLifecycle:
    def __init__(
        self,
        *,
        mappings_dir: Path,
        registry: ContainerRegistry,
        on_gone: GoneHook | None = None,
        run_blocking: BlockingRunner = run_in_thread,
    ) -> None:
        self._mappings_dir = mappings_dir
        self._run_blocking = run_blocking
        # Holds the API while a container starts: here while its first files are written,
        # in the event stream from its start event's inspect on.
        self.priority = EventPriority()
        self._registry = registry
        self._pool = registry.tty_pool
        self._on_gone_hook = on_gone
        self._locks: dict[str, _LockSlot] = {}
        # Per container: how many times the API changed its wanted state, and how many of
        # those changes the disk holds (see set_start_values).
        self._changes: dict[str, int] = {}
        self._changes_written: dict[str, int] = {}
        self._retries: dict[str, _Retry] = {}
        self._retry_added = trio.Event()

    async def run_file_writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Check that FRACTAL_ROOT can be written (raises MappingsUnwritable, naming it, when
        not), then retry failed writes forever. Start it before the Docker event stream."""
        try:
            await self._io(probe_writable, self._mappings_dir)
        except OSError as exc:
            raise MappingsUnwritable(
                f"cannot write in FRACTAL_ROOT={self._mappings_dir.parent}: {exc.strerror or exc}"
            ) from exc
        task_status.started()
        while True:
            now = trio.current_time()
            for container_id, retry in list(self._retries.items()):
                if retry.due <= now:
                    await self._retry(container_id)
            next_due = min((r.due for r in self._retries.values()), default=math.inf)
            added = self._retry_added
            with trio.move_on_at(next_due):
                await added.wait()

    @property
    def pending_writes(self) -> int:
        return len(self._retries)

    async def adopt(self, running: Sequence[ContainerInfo]) -> None:
        """Start-up (contract §8): keep the TTY and files of every running managed container
        with a directory, repair what is missing, give fresh resources to the others, remove
        all other entries."""
        if self._registry.records():
            raise RuntimeError("adopt() is for start-up; use reconcile() afterwards")
        plan = await self._io(plan_adoption, self._mappings_dir, _live_managed(running))
        for container_id in plan.remove:
            await self._remove_dir(container_id)
        # Claim every kept TTY before handing out any new one.
        for record in plan.keep:
            if record.tty is None or not self._pool.claim(record.tty):
                raise AssertionError("adoption plan holds a TTY twice")
        for record in plan.new_tty:
            self._give_tty(record)
            if record.tty is None and record.ready:
                # `.ready` must never stand without `tty`: it goes, until a TTY frees up.
                logger.error(
                    "ready container without a TTY: its .ready is removed",
                    extra={"container_id": record.id},
                )
                record.ready = False
        for record in [*plan.keep, *plan.new_tty]:
            # Files first: whoever wakes on the registry (the API) may write into the directory.
            await self._write(record)
            self._registry.add(record)
        for info in plan.fresh:
            await self._start(info)
        logger.info(
            "adopted %d containers, %d got fresh resources, %d entries removed",
            len(plan.keep) + len(plan.new_tty),
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
                await self._start(info)
            elif record.host_port != info.host_port:
                # Only a missed die+start can change a live container's port. What was
                # mounted for it under the old port is its previous run's, and stale: the
                # hook unmounts it as it would have at the missed die, before the next
                # container given the old port finds somebody else's Drive there.
                previous = dataclasses.replace(record, cloud_storage=list(record.cloud_storage))
                logger.info(
                    "host port changed from %d to %d: a restart the event stream missed",
                    record.host_port,
                    info.host_port,
                    extra={"container_id": record.id},
                )
                self._registry.move_port(record, info.host_port)
                record.cloud_storage.clear()
                await self._write(record)
                await self._run_gone_hook(previous)

    async def on_gone(self, container_id: str) -> None:
        """Die or destroy (idempotent, unknown ids fine): unmount cloud storage, remove the
        directory, free the TTY."""
        if not is_container_id(container_id):
            await trio.lowlevel.checkpoint()
            return
        async with self._locked(container_id):
            record = self._registry.remove(container_id)
            self._retries.pop(container_id, None)
            self._changes.pop(container_id, None)
            self._changes_written.pop(container_id, None)
            if record is None:
                # Never seen (or already cleaned up): nothing to unmount, but make sure no
                # directory survives, whatever left it. Most such dies are of containers we
                # never managed: one lstat (a link is not followed) spares them the thread.
                if MappingDir(self._mappings_dir, container_id).present():
                    await self._remove_dir(container_id)
                else:
                    await trio.lowlevel.checkpoint()
                return
            try:
                await self._run_gone_hook(record)
            finally:
                # Shielded: it completes even when we are being cancelled.
                with trio.CancelScope(shield=True):
                    await self._remove_dir(container_id)
                self._release(record)
        await self._hand_tty_to_waiting()

    async def reconcile(
        self, running: Sequence[ContainerInfo], *, leave_alone: Container[str] = frozenset()
    ) -> None:
        """`running` is the full truth: every record not in it is gone, every running
        managed container in it is registered, every other entry is removed.

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
        await self._check_entries(leave_alone)

    def known_host_ports(self) -> dict[str, int]:
        """Id → host port of every registered container: a reconcile confirms with an
        inspect only the containers Docker's listing shows otherwise."""
        return {record.id: record.host_port for record in self._registry.records()}

    async def set_start_values(
        self, host_port: int, *, dpi: int, container_arn: str | None = None
    ) -> ContainerRecord:
        """Write DPI (and ContainerARN) then ``.ready``; idempotent, the last value wins.
        An empty ARN counts as none. Raises ContainerUnknown when no live container has the
        port, ContainerWithoutTty when it has no TTY, ValueError for a bad dpi or ARN, and
        OSError when the files cannot be written now (they are retried in the background).

        Returns once the values, or later ones, are durable on disk. Concurrent calls for one
        container share writes: each sets its values under the container's lock and lets it
        go; the lock (first come, first served) passes to the calls queued behind it, which
        set theirs; then the first write covers them all, and the others find their change
        written and return without a write of their own (one set of fsyncs for a crowd)."""
        if container_arn == "":
            container_arn = None  # the webserver's way of saying "no ARN"
        if not is_valid_dpi(dpi):
            raise ValueError(f"dpi must be an integer from {MIN_DPI} to {MAX_DPI}")
        if container_arn is not None and not is_valid_arn(container_arn):
            raise ValueError("container_ARN must be one printable line")
        record = self._registry.by_host_port(host_port)
        if record is None:
            await trio.lowlevel.checkpoint()
            raise ContainerUnknown(host_port)
        # What follows waits (the lock, the write's fsyncs): the request's slot is free
        # meanwhile, for the next request, which then shares this write instead of queueing
        # for its own.
        async with waiting():
            return await self._set_and_write(record, host_port, dpi, container_arn)

    async def _set_and_write(
        self, record: ContainerRecord, host_port: int, dpi: int, container_arn: str | None
    ) -> ContainerRecord:
        """set_start_values once its arguments are checked: see there."""
        async with self._locked(record.id):
            # The lock may have waited for a die of this very container: look again.
            if self._registry.get(record.id) is not record or record.host_port != host_port:
                raise ContainerUnknown(host_port)
            if record.tty is None:
                raise ContainerWithoutTty(host_port)
            record.dpi = dpi
            if container_arn is not None:
                record.container_arn = container_arn
            record.ready = True
            change = self._changes[record.id] = self._changes.get(record.id, 0) + 1
        async with self._locked(record.id):
            if self._registry.get(record.id) is not record or record.host_port != host_port:
                raise ContainerUnknown(host_port)  # died (or moved) before its files were
            if self._changes_written.get(record.id, 0) < change:
                error = await self._write(record)
                if error is None and not record.ready:
                    # An untrusted ContainerARN (not in this request) was removed, and `.ready`
                    # with it: these start values make the container ready again without it.
                    record.ready = True
                    error = await self._write(record)
                if error is not None:
                    raise error
            return record

    async def _start(self, info: ContainerInfo) -> None:
        assert info.host_port is not None
        record = ContainerRecord(id=info.id, host_port=info.host_port, tty=None)
        self._give_tty(record)
        # Files first: whoever wakes on the registry (the API) may write into the directory.
        with self.priority.hold():  # the API waits: its load slowed this write 5x
            await self._write(record)
        self._registry.add(record)
        logger.info(
            "container running: host port %d, tty %s",
            record.host_port,
            record.tty,
            extra={"container_id": record.id},
        )

    async def _run_gone_hook(self, record: ContainerRecord) -> None:
        """The hook (cloud-storage unmount) for a run of a container that is over: `record`
        holds the host port it had. Its failure is logged, never raised."""
        try:
            if self._on_gone_hook is not None:
                await self._on_gone_hook(record)
        except Exception:
            logger.exception("on_gone hook failed", extra={"container_id": record.id})

    def _give_tty(self, record: ContainerRecord) -> None:
        record.tty = self._pool.assign()
        if record.tty is None:
            # Error level reaches Sentry; the container stays unassigned, the service runs on.
            logger.error(
                "no free TTY: container left without one", extra={"container_id": record.id}
            )

    async def _write(self, record: ContainerRecord) -> OSError | None:
        """Make the disk match `record` (caller holds its lock, or runs adoption); on failure
        schedule a retry and return the error."""
        files = _files_of(record)
        mapping = MappingDir(self._mappings_dir, record.id)
        changes = self._changes.get(record.id, 0)  # all of them are in `files`
        try:
            untrusted = await self._io(mapping.write, files)
        except OSError as exc:
            # Error level (Sentry) once; the retries of a disk that stays full only at debug.
            log = logger.debug if record.files_pending else logger.error
            log(
                "cannot write mapping directory (%s): retrying",
                exc.strerror or exc,
                extra={"container_id": record.id},
            )
            self._schedule_retry(record)
            return exc
        except BaseException:
            self._schedule_retry(record)  # cancelled mid-write: the disk state is unknown
            raise
        if untrusted:
            # A link, a special file or garbage where a value we do not know should be: not
            # the container's value, and `.ready` promised one (contract §3). Both removed.
            logger.error(
                "%s in the mapping directory held no value of ours (a link, a special file or "
                "garbage) and the value is unknown: removed, and .ready with it, until the "
                "webserver sends the start values again",
                " and ".join(untrusted),
                extra={"container_id": record.id},
            )
            record.ready = False
        if record.files_pending:
            logger.info("mapping directory written after all", extra={"container_id": record.id})
        record.files_pending = False
        self._retries.pop(record.id, None)
        if changes:
            self._changes_written[record.id] = changes
        return None

    def _schedule_retry(self, record: ContainerRecord) -> None:
        record.files_pending = True
        retry = self._retries.get(record.id)
        delay = RETRY_FIRST_DELAY if retry is None else min(retry.delay * 2, RETRY_MAX_DELAY)
        self._retries[record.id] = _Retry(delay=delay, due=trio.current_time() + delay)
        self._retry_added.set()
        self._retry_added = trio.Event()

    async def _retry(self, container_id: str) -> None:
        async with self._locked(container_id):
            record = self._registry.get(container_id)
            if record is None:
                self._retries.pop(container_id, None)  # gone meanwhile: nothing to write
            elif container_id in self._retries:
                await self._write(record)

    async def _remove_dir(self, container_id: str) -> None:
        try:
            await self._io(remove_entry, self._mappings_dir, container_id)
        except OSError:
            logger.exception(
                "cannot remove mapping directory", extra={"container_id": container_id}
            )

    def _release(self, record: ContainerRecord) -> None:
        if record.tty is not None:
            self._pool.release(record.tty)
        logger.info("container gone", extra={"container_id": record.id})

    async def _hand_tty_to_waiting(self) -> None:
        # A container that started while the pool was exhausted gets a freed TTY, as long as
        # it is not ready yet: its `tty` file must still come before `.ready`.
        for record in self._registry.records():
            if record.tty is not None or record.ready or self._pool.free_count == 0:
                continue
            async with self._locked(record.id):
                if self._registry.get(record.id) is record and record.tty is None:
                    self._give_tty(record)
                    await self._write(record)
            return

    async def _check_entries(self, leave_alone: Container[str] = frozenset()) -> None:
        """Remove entries of containers we do not know; rewrite a live container's directory
        when something else took its place (a container may have replaced it by a link) or
        when a file in it is not what we wrote (a link or garbage at a value: replaced with
        the value we know, else removed with `.ready`, see MappingDir.write)."""
        entries = await self._io(list_mapping_entries, self._mappings_dir)
        wanted = {
            name: files
            for name, kind in entries
            if kind == "dir"
            and name not in leave_alone
            and (files := self._wanted_files(name)) is not None
        }
        tampered = await self._io(_tampered_dirs, self._mappings_dir, wanted)
        for name, kind in entries:
            if not is_container_id(name) or name in self._locks or name in leave_alone:
                continue  # not ours, being handled right now, or left to a newer event
            async with self._locked(name):
                record = self._registry.get(name)
                if record is None:
                    await self._remove_dir(name)
                elif kind != "dir":
                    logger.warning(
                        "a %s took the place of a mapping directory: rewriting it",
                        kind,
                        extra={"container_id": name},
                    )
                    await self._write(record)
                elif name in tampered and not record.files_pending:
                    logger.warning(
                        "a mapping directory does not hold what was written: rewriting it",
                        extra={"container_id": name},
                    )
                    await self._write(record)

    def _wanted_files(self, container_id: str) -> MappingFiles | None:
        record = self._registry.get(container_id)
        return None if record is None else _files_of(record)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run_blocking(functools.partial(fn, *args))

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


def _files_of(record: ContainerRecord) -> MappingFiles:
    return MappingFiles(
        host_port=record.host_port,
        tty=record.tty,
        dpi=record.dpi,
        container_arn=record.container_arn,
        ready=record.ready,
    )


def _tampered_dirs(mappings_dir: Path, wanted: dict[str, MappingFiles]) -> set[str]:
    """The ids whose directory differs from what they should hold (one thread for all)."""
    return {cid for cid, files in wanted.items() if MappingDir(mappings_dir, cid).tampered(files)}


def _live_managed(running: Sequence[ContainerInfo]) -> dict[str, ContainerInfo]:
    return {
        info.id: info
        for info in running
        if info.running and info.host_port is not None and is_container_id(info.id)
    }
