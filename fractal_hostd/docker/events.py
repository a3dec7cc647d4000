"""The Docker event stream task: keeps the container lifecycle in step with dockerd.

Design (see docs/docker.md for the long version):

* Subscribe first, then list + inspect ("reconcile"), then process. A container that starts
  or dies between the subscription and the listing is then still seen as an event; one that
  changed before the subscription is in the listing. The original service did neither and
  lost containers whenever the stream dropped.
* A reader task that never blocks. dockerd skips a subscriber that does not take an event
  within 100 ms (and keeps only its last 256 events), so the reader only decodes and pushes
  into an unbounded memory channel; a processor task does the slow part (inspect over HTTP,
  files on disk). Memory is bounded in practice by dockerd's own event rate.
* On any drop: reconnect with capped exponential backoff and jitter, resume with
  `since=<last timeNano>`, drop the replayed duplicates (`cursor.EventCursor`), and reconcile
  again, since events older than dockerd's 256-event buffer (or lost in a dockerd restart)
  are gone for good. A periodic reconcile (300 s ± 30 s) also catches a stream that went
  silent without closing: the listing times out and the stream is re-opened.
* Only `start`, `die` and `destroy` are subscribed: `start` is the only way a container
  becomes running, `die` is the first sign it stopped (`kill`/`stop` may not end it; `oom`
  is followed by `die`), `destroy` covers removal without a seen `die`.
* Events that were queued before a reconcile finished are older than that reconcile's
  snapshot, so they are checked against dockerd before acting on them: a replayed `die` of a
  container that has since been restarted must not take its TTY away.

dockerd unusable (unreachable, or answering errors) for longer than `unreachable_budget`
raises `DockerUnreachableFatal`: the supervisor turns it into the shutdown report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Protocol

import trio

from fractal_hostd.containers.info import ContainerInfo
from fractal_hostd.docker.backoff import Backoff, jittered
from fractal_hostd.docker.client import (
    DockerClient,
    DockerError,
    DockerEventStream,
    DockerNotFound,
    DockerUnreachable,
)
from fractal_hostd.docker.cursor import EventCursor
from fractal_hostd.hoststate import DockerStatus

logger = logging.getLogger(__name__)

CONTAINER_EVENTS: dict[str, list[str]] = {
    "type": ["container"],
    "event": ["start", "die", "destroy"],
}


_READER_BATCH = 64
# A connection must stay up this long before the reconnect backoff starts small again: a
# dockerd (or proxy) that accepts, answers the listing and drops the stream at once would
# otherwise be reconnected to (and fully reconciled) at the backoff's initial delay forever.
STABLE_SESSION = 30.0


class DockerUnreachableFatal(Exception):
    """dockerd stayed unusable for longer than the budget: a fatal condition."""

    def __init__(self, budget: float, last_error: BaseException | None) -> None:
        super().__init__(
            f"Docker unreachable for more than {budget:g} s (last error: {last_error!r})"
        )
        self.budget = budget
        self.last_error = last_error


class Lifecycle(Protocol):
    """What the stream needs of `containers.ContainerLifecycle`."""

    async def adopt(self, running: Sequence[ContainerInfo]) -> None: ...
    async def reconcile(self, running: Sequence[ContainerInfo]) -> None: ...
    async def on_running(self, info: ContainerInfo) -> None: ...
    async def on_gone(self, container_id: str) -> None: ...


async def fetch_running(client: DockerClient) -> list[ContainerInfo]:
    """Every running container, inspected (a container gone meanwhile is left out)."""
    infos: list[ContainerInfo] = []
    for summary in await client.list_containers(filters={"status": ["running"]}):
        container_id = summary.get("Id")
        if not isinstance(container_id, str):
            continue
        info = await _inspect_info(client, container_id)
        if info is not None and info.running:
            infos.append(info)
    return infos


async def _inspect_info(client: DockerClient, container_id: str) -> ContainerInfo | None:
    try:
        return ContainerInfo.from_inspect(await client.inspect_container(container_id))
    except DockerNotFound:
        return None


def _action(event: dict[str, Any]) -> str:
    # "exec_start: sh", "health_status: healthy": only the part before ": " names the action.
    action = event.get("Action") or event.get("status") or ""
    return str(action).split(": ", 1)[0]


def _container_id(event: dict[str, Any]) -> str | None:
    actor = event.get("Actor")
    container_id = actor.get("ID") if isinstance(actor, dict) else None
    container_id = container_id or event.get("id")
    return container_id if isinstance(container_id, str) and container_id else None


class _Reader:
    """Drains one `/events` response into the channel; never waits on the processor."""

    def __init__(self) -> None:
        self.received = 0
        self.error: DockerUnreachable | None = None

    async def run(
        self,
        stream: DockerEventStream,
        send: trio.MemorySendChannel[tuple[int, dict[str, Any]]],
    ) -> None:
        async with send:
            try:
                async for event in stream:
                    send.send_nowait((self.received, event))
                    self.received += 1
                    if self.received % _READER_BATCH == 0:
                        # httpcore hands out already-buffered chunks without yielding: let
                        # the processor (and the API) run during a long burst.
                        await trio.lowlevel.checkpoint()
            except DockerUnreachable as exc:
                self.error = exc


class _EventStream:
    """State that outlives one connection: resume cursor, adoption, counters."""

    def __init__(
        self,
        client: DockerClient,
        lifecycle: Lifecycle,
        status: DockerStatus,
        reconcile_interval: float,
        reconcile_jitter: float,
    ) -> None:
        self.client = client
        self.lifecycle = lifecycle
        self.status = status
        self.reconcile_interval = reconcile_interval
        self.reconcile_jitter = reconcile_jitter
        self.cursor = EventCursor()
        self.adopted = False

    async def session(self, on_ready: Callable[[], None]) -> NoReturn:
        """One connection: subscribe, reconcile, call `on_ready`, process until it breaks.

        Always ends by raising DockerUnreachable/DockerError (why the connection ended).
        """
        send, recv = trio.open_memory_channel[tuple[int, dict[str, Any]]](math.inf)
        reader = _Reader()
        failure: DockerUnreachable | DockerError | None = None
        async with (
            self.client.events(filters=CONTAINER_EVENTS, since=self.cursor.since) as stream,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(reader.run, stream, send)
            try:
                verify_before = await self._reconcile(reader)
                on_ready()
                await self._process(recv, reader, verify_before)
            except (DockerUnreachable, DockerError) as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        raise reader.error or DockerUnreachable("dockerd ended the event stream")

    async def _reconcile(self, reader: _Reader) -> int:
        """List + inspect, hand the truth to the lifecycle; returns the sequence number
        below which queued events predate this snapshot."""
        started = trio.current_time()
        running = await fetch_running(self.client)
        if not self.adopted:
            # A failure here is a start-up failure: let it reach the supervisor.
            await self.lifecycle.adopt(running)
            self.adopted = True
        else:
            try:
                await self.lifecycle.reconcile(running)
            except Exception:
                logger.exception("reconcile failed; retried at the next one")
                self.status.reconcile_failed()
                return reader.received
        self.status.reconciled(started)
        logger.debug("reconciled: %d running containers", len(running))
        return reader.received

    async def _process(
        self,
        recv: trio.MemoryReceiveChannel[tuple[int, dict[str, Any]]],
        reader: _Reader,
        verify_before: int,
    ) -> None:
        """Handle queued events until the reader closes the channel; reconcile periodically."""
        next_reconcile = trio.current_time() + self._next_interval()
        while True:
            item: tuple[int, dict[str, Any]] | None = None
            with trio.move_on_at(next_reconcile):
                try:
                    item = await recv.receive()
                except trio.EndOfChannel:
                    return
            if item is None:
                verify_before = await self._reconcile(reader)
                next_reconcile = trio.current_time() + self._next_interval()
                continue
            sequence, event = item
            await self._handle(event, stale=sequence < verify_before)

    def _next_interval(self) -> float:
        return jittered(self.reconcile_interval, self.reconcile_jitter)

    async def _handle(self, event: dict[str, Any], *, stale: bool) -> None:
        if not self.cursor.accept(event):
            return  # replayed by `since` after a reconnect: already handled
        container_id = _container_id(event)
        if container_id is None or event.get("Type", "container") != "container":
            return
        action = _action(event)
        try:
            if action == "start" or (action == "die" and stale):
                # Inspect tells the present state; a stale die may belong to a container
                # that has been restarted since.
                info = await _inspect_info(self.client, container_id)
                if info is not None and info.running:
                    if info.host_port is not None:
                        await self.lifecycle.on_running(info)
                        self.status.files_written(event)
                else:
                    await self.lifecycle.on_gone(container_id)
            elif action in ("die", "destroy"):
                await self.lifecycle.on_gone(container_id)
            else:
                return
        except (DockerUnreachable, DockerError):
            raise
        except Exception:
            # One bad event must not end the stream; the next reconcile repairs its effect.
            logger.exception(
                "handling %s event failed", action, extra={"container_id": container_id}
            )
        self.status.event_processed(event)


async def run_event_stream(
    client: DockerClient,
    lifecycle: Lifecycle,
    *,
    unreachable_budget: float,
    reconcile_interval: float = 300.0,
    reconcile_jitter: float = 30.0,
    status: DockerStatus,
    backoff: Backoff | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run forever (until cancelled); `task_status.started()` after the first subscribe +
    adopt. Raises DockerUnreachableFatal when dockerd stays unusable beyond the budget."""
    stream = _EventStream(client, lifecycle, status, reconcile_interval, reconcile_jitter)
    backoff = backoff or Backoff()
    started = False
    down_since: float | None = None  # when dockerd last became unusable
    ready_at: float | None = None  # when the current connection became ready

    def on_ready() -> None:
        nonlocal started, ready_at
        status.connected = True
        ready_at = trio.current_time()
        if not started:
            started = True
            task_status.started()
        elif down_since is not None:
            status.reconnects += 1
            logger.info("Docker event stream reconnected")

    while True:
        try:
            await stream.session(on_ready)
        except (DockerUnreachable, DockerError) as exc:
            error = exc
        was_ready = status.connected
        status.connected = False
        now = trio.current_time()
        if ready_at is not None and now - ready_at >= STABLE_SESSION:
            backoff.reset()
        ready_at = None
        if was_ready:
            down_since = now
            logger.warning("Docker event stream lost: %s", error)
        elif down_since is None:
            down_since = now
            logger.warning("Docker not usable: %s", error)
        else:
            logger.debug("Docker still not usable: %s", error)
        if now - down_since >= unreachable_budget:
            # Chained: Sentry and the log then show where the last failing call failed.
            raise DockerUnreachableFatal(unreachable_budget, error) from error
        await trio.sleep(min(backoff.next_delay(), down_since + unreachable_budget - now))
