"""The live managed containers, looked up by id or by host port.

Only `ContainerLifecycle` changes the registry (`add`/`remove`); the API reads it. Everything
here is synchronous and in memory, so a lookup never yields to another trio task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from fractal_hostd.containers.ttypool import TtyPool

logger = logging.getLogger(__name__)


@dataclass
class ContainerRecord:
    """One managed, live container and the resources it holds."""

    id: str
    host_port: int
    tty: int | None  # None: the TTY pool was exhausted when it started
    dpi: int | None = None
    container_arn: str | None = None
    ready: bool = False
    cloud_storage: list[str] = field(default_factory=list)  # provider names (cloud storage)
    # The files on disk lag behind this record (a write failed): the lifecycle retries.
    files_pending: bool = False


class ContainerRegistry:
    def __init__(self, tty_pool: TtyPool | None = None) -> None:
        self.tty_pool = tty_pool if tty_pool is not None else TtyPool()
        self._by_id: dict[str, ContainerRecord] = {}
        self._by_port: dict[int, ContainerRecord] = {}
        # Replaced on every `add`: waiters re-check after each change. One shared event
        # instead of one per port, so a cancelled waiter leaves nothing behind.
        self._changed = trio.Event()

    def get(self, container_id: str) -> ContainerRecord | None:
        return self._by_id.get(container_id)

    def by_host_port(self, host_port: int) -> ContainerRecord | None:
        return self._by_port.get(host_port)

    async def wait_for_host_port(self, host_port: int) -> ContainerRecord:
        """The record for `host_port`, waiting until one is added. Waits forever: the
        caller bounds it (the API uses FRACTAL_CONTAINER_WAIT)."""
        await trio.lowlevel.checkpoint()
        while (record := self._by_port.get(host_port)) is None:
            await self._changed.wait()
        return record

    def records(self) -> list[ContainerRecord]:
        return list(self._by_id.values())

    @property
    def free_ttys(self) -> int:
        return self.tty_pool.free_count

    def pending_file_writes(self) -> int:
        """Containers whose mapping files failed to write and wait for a retry."""
        return sum(1 for record in self._by_id.values() if record.files_pending)

    def add(self, record: ContainerRecord) -> None:
        """Register a live container (lifecycle only) and wake waiters for its port."""
        self._by_id[record.id] = record
        holder = self._by_port.get(record.host_port)
        if holder is not None and holder.id != record.id:
            # Docker refuses two bindings of one host port, so the older holder is a
            # container whose die we have not processed yet: the newer one is the truth.
            logger.warning(
                "host port %d moves to another container",
                record.host_port,
                extra={"container_id": record.id, "previous_container_id": holder.id},
            )
        self._by_port[record.host_port] = record
        self._changed.set()
        self._changed = trio.Event()

    def move_port(self, record: ContainerRecord, host_port: int) -> None:
        """Re-index a registered container whose host port changed (lifecycle only)."""
        if self._by_port.get(record.host_port) is record:
            del self._by_port[record.host_port]
        record.host_port = host_port
        self.add(record)

    def remove(self, container_id: str) -> ContainerRecord | None:
        """Forget a container (lifecycle only); its TTY is released by the lifecycle."""
        record = self._by_id.pop(container_id, None)
        if record is not None and self._by_port.get(record.host_port) is record:
            del self._by_port[record.host_port]
        return record
