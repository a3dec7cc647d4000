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
* Events that were queued before the reconcile of a (re)connect finished are older than its
  snapshot, so they are checked against dockerd before acting on them: a replayed `die` of a
  container that has since been restarted must not take its TTY away.
* The periodic reconcile runs beside the processor and never holds new events; containers
  with an event newer than its snapshot are left to their events. A steady reconcile is one
  listing: only entries that would change something are confirmed by (bounded, concurrent)
  inspects. Paused containers are live (contract §2): the listing has no status filter.
* An event is recorded as handled (the `since` resume point) only once it has been handled.
  Then it is published to the other tasks that subscribed to events (`fanout.EventFanout`:
  the ECS-agent watcher), so they get each event once, in order, with this stream's replay
  and without a subscription of their own. Before any event was handled, a reconnect resumes
  `since` the first subscription, so events of the gap still come (the reconcile repairs the
  lifecycle, but not what the subscribers are told).

Docker errors about one container (an inspect answered 500/409) never end the session.
dockerd unusable (unreachable, or answering errors to `/events` or the start-up listing) for
longer than `unreachable_budget` raises `DockerUnreachableFatal`: the supervisor turns it
into the shutdown report.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, NoReturn, Protocol

import trio

from fractal_hostd.containers.info import ContainerInfo
from fractal_hostd.docker.backoff import Backoff, jittered
from fractal_hostd.docker.client import (
    DockerClient,
    DockerError,
    DockerEventStream,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
)
from fractal_hostd.docker.cursor import EventCursor, RunStarts, format_since
from fractal_hostd.docker.fanout import EventFanout
from fractal_hostd.event_priority import EventPriority
from fractal_hostd.hoststate import DockerStatus

logger = logging.getLogger(__name__)

CONTAINER_EVENTS: dict[str, list[str]] = {
    "type": ["container"],
    "event": ["start", "die", "destroy"],
}


_HANDLED_ACTIONS = frozenset(CONTAINER_EVENTS["event"])
_READER_BATCH = 64
# Inspects of one reconcile in flight at once.
INSPECT_CONCURRENCY = 8
# Seconds a ping may take to tell a hung inspect (one container) from a hung dockerd.
ENGINE_CHECK_TIMEOUT = 5.0
# Seconds until a reconcile that could not judge everything (a listing or an inspect answered
# with an error) is tried again, instead of waiting for the next periodic one.
RETRY = 5.0
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
    async def reconcile(
        self, running: Sequence[ContainerInfo], *, leave_alone: Container[str] = ...
    ) -> None: ...
    async def on_running(self, info: ContainerInfo) -> None: ...
    async def on_gone(self, container_id: str) -> None: ...
    def known_host_ports(self) -> Mapping[str, int]: ...
    @property
    def priority(self) -> EventPriority: ...


async def fetch_running(
    client: DockerClient,
    *,
    known: Mapping[str, int] | None = None,
    concurrency: int = INSPECT_CONCURRENCY,
) -> list[ContainerInfo]:
    """Every live (running or paused) managed container (a container gone meanwhile is left
    out), from one listing and the inspects of the containers it cannot settle.

    No `status` filter: `status=running` leaves paused containers out, and a paused container
    is live (contract §2). The default listing (`all=0`) holds running and paused ones, with
    their state and published ports.

    `known` is what the lifecycle holds (id → host port). A listing entry that agrees with it
    is taken as it is: on a steady host one listing is the whole reconcile (one inspect per
    container cost ~1 ms each, 59 ms at 50 containers, on a loaded host 5 ms each). An entry
    that would change something (a container not known yet, a known one listed with another
    port or not live) is confirmed by an inspect before it is acted on. Those inspects run
    concurrently, at most `concurrency` at a time, so a host with hundreds of unknown
    containers (start-up) does not open hundreds of connections to dockerd at once. A known
    container missing from the listing is not live: left out without an inspect.

    An inspect that dockerd answers with an error (500, 409...) for one container while it
    serves the others is that container's problem, not dockerd's: the container is judged by
    its listing entry (dockerd's own word on its state and ports), logged, and inspected
    again at the next reconcile. Skipping it instead would make it look gone: its directory
    removed at adoption, its TTY freed and handed on by a reconcile.
    """
    known = known or {}
    settled: list[ContainerInfo] = []
    to_confirm: list[dict[str, Any]] = []
    for summary in await client.list_containers():
        if not isinstance(summary.get("Id"), str):
            continue
        listed = ContainerInfo.from_summary(summary)
        if listed.id not in known:
            if listed.running and listed.host_port is not None:
                to_confirm.append(summary)  # new to us: it will get a TTY
            # else not live, or live but not managed: nothing to do either way
        elif listed.running and known[listed.id] == listed.host_port:
            settled.append(listed)
        else:
            to_confirm.append(summary)  # ours, but listed otherwise than we hold it
    return settled + await _confirm(client, to_confirm, concurrency)


async def _confirm(
    client: DockerClient, summaries: list[dict[str, Any]], concurrency: int
) -> list[ContainerInfo]:
    """Inspect each, at most `concurrency` at a time; the live ones, in listing order."""
    found: list[ContainerInfo | None] = [None] * len(summaries)
    limiter = trio.CapacityLimiter(concurrency)
    lost: list[DockerUnreachable] = []

    async def judge(index: int, summary: dict[str, Any], scope: trio.CancelScope) -> None:
        async with limiter:
            try:
                found[index] = await _judge(client, summary)
            except DockerUnreachable as exc:
                # dockerd itself is lost: the other inspects are pointless. Raised below as
                # itself, not wrapped in an exception group.
                lost.append(exc)
                scope.cancel()

    async with trio.open_nursery() as nursery:
        for index, summary in enumerate(summaries):
            nursery.start_soon(judge, index, summary, nursery.cancel_scope)
    if lost:
        raise lost[0]
    return [info for info in found if info is not None and info.running]


async def _judge(client: DockerClient, summary: dict[str, Any]) -> ContainerInfo | None:
    container_id: str = summary["Id"]
    try:
        return await _inspect_info(client, container_id)
    except DockerNotFound:
        return None
    except DockerError as exc:
        logger.warning(
            "inspect failed (%s): judged by the listing, inspected again at the next reconcile",
            exc,
            extra={"container_id": container_id},
        )
        return ContainerInfo.from_summary(summary)


class ContainerStuck(DockerError):
    """One container's inspect timed out while dockerd answers: that container's problem
    (dockerd's inspect waits for the container's lock, which a stuck kill can hold)."""

    def __init__(self, container_id: str) -> None:
        super().__init__(504, f"inspect of {container_id[:12]} timed out; dockerd answers")


async def _inspect_info(client: DockerClient, container_id: str) -> ContainerInfo:
    try:
        return ContainerInfo.from_inspect(await client.inspect_container(container_id))
    except DockerTimeout:
        if await _engine_answers(client):
            raise ContainerStuck(container_id) from None
        raise


async def _engine_answers(client: DockerClient) -> bool:
    with trio.move_on_after(ENGINE_CHECK_TIMEOUT):
        try:
            await client.ping()
        except (DockerUnreachable, DockerError):
            return False
        return True
    return False


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
        self._touched: set[str] | None = None

    @contextmanager
    def watching(self) -> Iterator[set[str]]:
        """A set that collects the container id of every event received while inside."""
        touched: set[str] = set()
        self._touched = touched
        try:
            yield touched
        finally:
            self._touched = None

    async def run(
        self,
        stream: DockerEventStream,
        send: trio.MemorySendChannel[tuple[int, dict[str, Any]]],
    ) -> None:
        async with send:
            try:
                async for event in stream:
                    if self._touched is not None:
                        container_id = _container_id(event)
                        if container_id is not None:
                            self._touched.add(container_id)
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
        fanout: EventFanout | None,
    ) -> None:
        self.client = client
        self.fanout = fanout
        self.lifecycle = lifecycle
        self.status = status
        self.reconcile_interval = reconcile_interval
        self.reconcile_jitter = reconcile_jitter
        self.cursor = EventCursor()
        self.run_starts = RunStarts()
        # Where a reconnect resumes before any event was handled: the first subscription.
        self.first_since: str | None = None
        self.adopted = False
        self.next_reconcile = math.inf  # set when a connection becomes ready
        self.periodic_failure: DockerUnreachable | None = None
        self._wakeup = trio.Event()  # set to bring the periodic reconcile forward

    async def session(self, on_ready: Callable[[], None]) -> NoReturn:
        """One connection: subscribe, reconcile, call `on_ready`, then process events and
        reconcile periodically alongside, until it breaks.

        Always ends by raising DockerUnreachable/DockerError (why the connection ended).
        """
        send, recv = trio.open_memory_channel[tuple[int, dict[str, Any]]](math.inf)
        reader = _Reader()
        failure: DockerUnreachable | DockerError | None = None
        self.periodic_failure = None
        if self.adopted:
            since = self.cursor.since or self.first_since
        else:  # the subscription that adopts: it starts now, the listing covers the past
            since = None
            self.first_since = format_since(time.time_ns())
        async with (
            self.client.events(filters=CONTAINER_EVENTS, since=since) as stream,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(reader.run, stream, send)
            try:
                self.next_reconcile = math.inf
                # What happened before the listing, the listing shows: a die older than it
                # is checked against the present state, whenever it arrives.
                self.run_starts.listed(time.time_ns())
                verify_before = await self._reconcile_on_connect(reader)
                self.next_reconcile = min(
                    self.next_reconcile, trio.current_time() + self._next_interval()
                )
                on_ready()
                nursery.start_soon(self._reconcile_periodically, reader, nursery.cancel_scope)
                await self._process(recv, verify_before)
            except (DockerUnreachable, DockerError) as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        failure = failure or self.periodic_failure
        if failure is not None:
            raise failure
        raise reader.error or DockerUnreachable("dockerd ended the event stream")

    async def _reconcile_on_connect(self, reader: _Reader) -> int:
        """List + inspect, hand the truth to the lifecycle before any event is handled;
        returns the sequence number below which queued events predate this snapshot.

        Unlike the periodic reconcile, this one holds the events: right after a reconnect
        they are the `since` replay, older than the listing, and the stale-die check (a
        `die` of a container restarted since must not take its TTY) needs the listing first.
        """
        started = trio.current_time()
        if not self.adopted:
            # A failure here is a start-up failure: let it reach the supervisor.
            running = await fetch_running(self.client)
            await self.lifecycle.adopt(running)
            self.adopted = True
        else:
            try:
                running = await fetch_running(self.client, known=self.lifecycle.known_host_ports())
            except DockerError as exc:
                # dockerd answers, and the open stream goes on delivering events (a `since`
                # replay included): keep it, and try the listing again soon.
                logger.warning("listing containers failed (%s); retried in %g s", exc, RETRY)
                self.retry_reconcile_soon()
                return reader.received
            try:
                await self.lifecycle.reconcile(running)
            except Exception:
                logger.exception("reconcile failed; retried at the next one")
                self.status.reconcile_failed()
                return reader.received
        self.status.reconciled(started)
        logger.debug("reconciled: %d running containers", len(running))
        return reader.received

    async def _reconcile_periodically(self, reader: _Reader, session: trio.CancelScope) -> None:
        """Every `reconcile_interval` (± jitter), or sooner when asked to retry, while the
        processor goes on handling events. dockerd lost meanwhile ends the session."""
        while True:
            while trio.current_time() < self.next_reconcile:
                self._wakeup = trio.Event()
                with trio.move_on_at(self.next_reconcile):
                    await self._wakeup.wait()
            # Set before the run, so that a retry asked for during it is not overwritten.
            self.next_reconcile = trio.current_time() + self._next_interval()
            try:
                await self._reconcile_alongside_events(reader)
            except DockerUnreachable as exc:
                self.periodic_failure = exc
                session.cancel()
                return

    async def _reconcile_alongside_events(self, reader: _Reader) -> None:
        """List + inspect + hand the truth to the lifecycle without holding new events.

        The listing and the inspects are a snapshot, and events keep arriving while it is
        taken and applied. An event received since the snapshot began is newer than the
        snapshot's view of its container (a `die` handled while that container's inspect
        was on its way back; a `start` handled after the listing was answered): for those
        containers the snapshot is not applied, the event alone decides. The set of them is
        read at every step of the lifecycle's reconcile, so it may grow while it runs.
        Events received before the snapshot are older than it; their handling is idempotent
        and ordered by the lifecycle's per-container lock.
        """
        started = trio.current_time()
        with reader.watching() as touched:
            try:
                running = await fetch_running(self.client, known=self.lifecycle.known_host_ports())
            except DockerError as exc:
                logger.warning("listing containers failed (%s); retried in %g s", exc, RETRY)
                self.retry_reconcile_soon()
                return
            try:
                await self.lifecycle.reconcile(running, leave_alone=touched)
            except Exception:
                logger.exception("reconcile failed; retried at the next one")
                self.status.reconcile_failed()
                return
        self.status.reconciled(started)
        logger.debug(
            "reconciled: %d running containers, %d left to their events", len(running), len(touched)
        )

    def retry_reconcile_soon(self) -> None:
        self.next_reconcile = min(self.next_reconcile, trio.current_time() + RETRY)
        self._wakeup.set()

    async def _process(
        self,
        recv: trio.MemoryReceiveChannel[tuple[int, dict[str, Any]]],
        verify_before: int,
    ) -> None:
        """Handle queued events in order until the reader closes the channel."""
        async for sequence, event in recv:
            await self._handle(event, stale=sequence < verify_before)

    def _next_interval(self) -> float:
        return jittered(self.reconcile_interval, self.reconcile_jitter)

    async def _handle(self, event: dict[str, Any], *, stale: bool) -> None:
        if self.cursor.handled_before(event):
            return  # replayed by `since` after a reconnect: already handled
        container_id = _container_id(event)
        action = _action(event)
        if (
            container_id is not None
            and event.get("Type", "container") == "container"
            and action in _HANDLED_ACTIONS
        ):
            # A die of an earlier run, handled after the container's next start or after a
            # listing that saw it running again: inspect first.
            stale = stale or (action == "die" and self.run_starts.outdated(event))
            # A starting container waits for its files: the API waits meanwhile (bounded).
            with self.lifecycle.priority.hold() if action == "start" else nullcontext():
                await self._apply(container_id, action, stale=stale, event=event)
            self.run_starts.note(event)
            self.status.event_processed(event)
        # Only now: an event whose handling was cut short by a lost dockerd (the raise
        # above) stays after the resume point and comes back in the `since` replay; and it
        # is published only once, when handled.
        if self.fanout is not None:
            self.fanout.publish(event)
        self.cursor.record(event)

    async def _apply(
        self, container_id: str, action: str, *, stale: bool, event: dict[str, Any]
    ) -> None:
        try:
            if action == "start" or (action == "die" and stale):
                # Inspect tells the present state; a stale die may belong to a container
                # that has been restarted since.
                try:
                    info = await _inspect_info(self.client, container_id)
                except DockerNotFound:
                    await self.lifecycle.on_gone(container_id)
                    return
                if info.running:
                    if info.host_port is not None:
                        await self.lifecycle.on_running(info)
                        self.status.files_written(event)
                else:
                    await self.lifecycle.on_gone(container_id)
            else:
                await self.lifecycle.on_gone(container_id)
        except DockerUnreachable:
            raise
        except DockerError as exc:
            # dockerd answers, but not about this container: its problem, not dockerd's.
            # Leave it as it is; the reconcile, brought forward, judges it again.
            logger.warning(
                "inspect after a %s event failed (%s); reconciling in %g s",
                action,
                exc,
                RETRY,
                extra={"container_id": container_id},
            )
            self.retry_reconcile_soon()
        except Exception:
            # One bad event must not end the stream; the next reconcile repairs its effect.
            logger.exception(
                "handling %s event failed", action, extra={"container_id": container_id}
            )


async def run_event_stream(
    client: DockerClient,
    lifecycle: Lifecycle,
    *,
    unreachable_budget: float,
    reconcile_interval: float = 300.0,
    reconcile_jitter: float = 30.0,
    status: DockerStatus,
    backoff: Backoff | None = None,
    fanout: EventFanout | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run forever (until cancelled); `task_status.started()` after the first subscribe +
    adopt. Raises DockerUnreachableFatal when dockerd stays unusable beyond the budget.
    Each handled event is then published to `fanout`'s subscribers."""
    stream = _EventStream(client, lifecycle, status, reconcile_interval, reconcile_jitter, fanout)
    backoff = backoff or Backoff()
    started = False
    down_since: float | None = None  # when dockerd last became unusable
    ready_at: float | None = None  # when the current connection became ready

    attempt = trio.CancelScope()
    error: BaseException | None = None  # the last failure, for the log and the fatal error

    def on_ready() -> None:
        nonlocal started, ready_at
        attempt.deadline = math.inf  # a working session is never cut by the budget
        status.connected = True
        ready_at = trio.current_time()
        if not started:
            started = True
            task_status.started()
        elif down_since is not None:
            status.reconnects += 1
            logger.info("Docker event stream reconnected")

    while True:
        # While dockerd is down, an attempt that hangs (a wedged engine) must not carry the
        # fatal verdict past the budget: the attempt ends with it.
        attempt = trio.CancelScope(
            deadline=math.inf if down_since is None else down_since + unreachable_budget
        )
        with attempt:
            try:
                await stream.session(on_ready)
            except (DockerUnreachable, DockerError) as exc:
                error = exc
        if attempt.cancelled_caught and error is None:
            error = DockerUnreachable("no answer within the unreachable budget")
        assert error is not None
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
