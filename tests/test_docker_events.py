"""The Docker event stream task against the fake engine, with the real ContainerLifecycle.

Rules: unix sockets under /tmp only, an absolute `trio.fail_after` around every I/O test,
`autojump_clock` where the test waits through backoff, budgets or reconcile intervals.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Container, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from fractal_hostd.containers.info import ContainerInfo
from fractal_hostd.containers.lifecycle import ContainerLifecycle, run_inline
from fractal_hostd.containers.registry import ContainerRegistry
from fractal_hostd.docker.client import DockerClient
from fractal_hostd.docker.cursor import EventCursor, RunStarts, format_since
from fractal_hostd.docker.events import (
    INSPECT_CONCURRENCY,
    RETRY,
    DockerUnreachableFatal,
    _action,
    run_event_stream,
)
from fractal_hostd.docker.fanout import EventFanout
from fractal_hostd.hoststate import DockerStatus
from tests.docker_fixtures import EmptyStream, event_stream_running, fake_client, fake_docker
from tests.fakes.docker_engine import FakeDockerEngine

__all__ = ["fake_client", "fake_docker"]


class RecordingLifecycle:
    """The real lifecycle, with a record of every call and optional failures per id."""

    def __init__(self, mappings: Path) -> None:
        self.mappings = mappings
        self.registry = ContainerRegistry()
        # Inline file I/O: a worker thread would let the autojump clock run ahead.
        self.inner = ContainerLifecycle(
            mappings_dir=mappings, registry=self.registry, run_blocking=run_inline
        )
        self.calls: list[tuple[str, str]] = []
        self.fail_ids: set[str] = set()
        self.priority = self.inner.priority
        self.api_held: list[tuple[str, bool]] = []  # at each on_running / on_gone

    async def adopt(self, running: Sequence[ContainerInfo]) -> None:
        self.calls.append(("adopt", ",".join(sorted(i.id for i in running))))
        await self.inner.adopt(running)

    async def reconcile(
        self, running: Sequence[ContainerInfo], *, leave_alone: Container[str] = frozenset()
    ) -> None:
        self.calls.append(("reconcile", ",".join(sorted(i.id for i in running))))
        await self.inner.reconcile(running, leave_alone=leave_alone)
        self.calls.append(("reconciled", ",".join(sorted(i.id for i in running))))

    async def on_running(self, info: ContainerInfo) -> None:
        self.calls.append(("running", info.id))
        self.api_held.append(("running", self.priority.holding))
        if info.id in self.fail_ids:
            raise RuntimeError("lifecycle failure for this container")
        await self.inner.on_running(info)

    async def on_gone(self, container_id: str) -> None:
        self.calls.append(("gone", container_id))
        self.api_held.append(("gone", self.priority.holding))
        await self.inner.on_gone(container_id)

    def known_host_ports(self) -> dict[str, int]:
        return self.inner.known_host_ports()

    def tty(self, container_id: str) -> str | None:
        path = self.mappings / container_id / "tty"
        return path.read_text() if path.exists() else None


@pytest.fixture
def lifecycle(tmp_path: Path) -> RecordingLifecycle:
    return RecordingLifecycle(tmp_path / "containerResourceMappings")


async def wait_for(predicate: Callable[[], bool], step: float = 0.005) -> None:
    while not predicate():
        await trio.sleep(step)


@asynccontextmanager
async def streaming(
    client: DockerClient,
    lifecycle: RecordingLifecycle,
    *,
    bound: float = 10.0,
    unreachable_budget: float = 120.0,
    reconcile_interval: float = 300.0,
    fanout: EventFanout | None = None,
) -> AsyncIterator[DockerStatus]:
    """The event stream running for the block, all of it within `bound` seconds (the I/O
    tests' absolute bound; virtual seconds under the autojump clock); yields its status."""
    status = DockerStatus()
    with trio.fail_after(bound):
        async with event_stream_running(
            client,
            lifecycle,
            status,
            unreachable_budget=unreachable_budget,
            reconcile_interval=reconcile_interval,
            fanout=fanout,
        ):
            yield status


@asynccontextmanager
async def streaming_until_fatal(
    client: DockerClient, lifecycle: RecordingLifecycle, *, unreachable_budget: float
) -> AsyncIterator[DockerStatus]:
    """`streaming` under the autojump clock, which must end in DockerUnreachableFatal within
    1000 virtual seconds; yields its status."""
    with pytest.RaisesGroup(DockerUnreachableFatal, flatten_subgroups=True):
        async with streaming(
            client, lifecycle, unreachable_budget=unreachable_budget, bound=1000
        ) as status:
            yield status


async def run_managed(
    fake_docker: FakeDockerEngine, lifecycle: RecordingLifecycle, name: str
) -> str:
    """Start a managed container and wait until the stream gave it a TTY; its id."""
    container = fake_docker.run(name)
    await wait_for(lambda: lifecycle.tty(container) is not None)
    return container


async def lose_the_stream(fake_docker: FakeDockerEngine, status: DockerStatus) -> None:
    """The engine stops listening; wait until the stream knows it is disconnected."""
    await fake_docker.stop_listening()
    await wait_for(lambda: not status.connected)


async def test_subscribes_before_listing_then_adopts_running_containers(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    managed = fake_docker.run("fhtest-managed")
    unmanaged = fake_docker.run("fhtest-plain", publish=False)
    async with streaming(fake_client, lifecycle) as status:
        assert status.connected
        assert lifecycle.registry.get(managed) is not None
        assert lifecycle.registry.get(unmanaged) is None
    requests = fake_docker.requests
    assert requests.index("GET /events") < requests.index("GET /containers/json")
    assert lifecycle.calls[0][0] == "adopt"
    assert lifecycle.tty(managed) == "10"
    assert not (lifecycle.mappings / unmanaged).exists()


async def test_start_and_die_events_write_and_remove_the_files(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        first = fake_docker.run("fhtest-1")
        second = await run_managed(fake_docker, lifecycle, "fhtest-2")
        assert (lifecycle.tty(first), lifecycle.tty(second)) == ("10", "11")
        port = (lifecycle.mappings / first / "hostPort_for_my_32262_tcp").read_text()
        assert port == fake_docker.containers[first].ports["32262/tcp"][0]["HostPort"]
        fake_docker.kill(first)
        await wait_for(lambda: not (lifecycle.mappings / first).exists())
        fake_docker.remove(second)
        await wait_for(lambda: not (lifecycle.mappings / second).exists())
        await wait_for(lambda: status.events_processed == 5)  # start x2, die x2, destroy
    assert lifecycle.registry.records() == []
    assert lifecycle.registry.free_ttys == 54


async def test_the_api_waits_while_a_start_event_is_handled(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    """From the inspect to the files (fractal_hostd/event_priority.py); a die does not hold:
    nothing waits on its cleanup."""
    async with streaming(fake_client, lifecycle) as status:
        container = await run_managed(fake_docker, lifecycle, "fhtest-1")
        fake_docker.kill(container)
        await wait_for(lambda: status.events_processed == 2)
    assert lifecycle.api_held == [("running", True), ("gone", False)]
    assert not lifecycle.priority.holding


async def test_a_start_event_for_a_container_already_removed_is_gone(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        fake_docker.emit("start", "d" * 64)  # inspect answers 404
        await wait_for(lambda: status.events_processed == 1)
    assert lifecycle.calls[-1] == ("gone", "d" * 64)


async def test_container_started_while_the_stream_was_down_is_handled_after_reconnect(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        before = await run_managed(fake_docker, lifecycle, "fhtest-before")
        await lose_the_stream(fake_docker, status)
        during = fake_docker.run("fhtest-during")
        fake_docker.kill(before)
        await fake_docker.start_listening()
        await wait_for(lambda: status.connected and lifecycle.tty(during) is not None)
        await wait_for(lambda: not (lifecycle.mappings / before).exists())
        assert status.reconnects == 1
    assert lifecycle.tty(during) == "10"  # the TTY freed by `before` is reused


async def test_since_replay_duplicates_are_dropped(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        container = fake_docker.run("fhtest-dup")
        await wait_for(lambda: status.events_processed == 1)
        fake_docker.drop_streams()  # resume with since=<that start's timeNano>: replayed
        await wait_for(lambda: status.reconnects == 1)
        fake_docker.kill(container)
        await wait_for(lambda: status.events_processed == 2)
        await trio.sleep(0.05)
    assert status.events_processed == 2
    assert [c for c in lifecycle.calls if c[0] in ("running", "gone")] == [
        ("running", container),
        ("gone", container),
    ]


def _published(channel: trio.MemoryReceiveChannel[dict[str, Any]]) -> Callable[[], list[str]]:
    """ "action id" of each event received on `channel` so far (drains it at each call)."""
    seen: list[str] = []

    def so_far() -> list[str]:
        while True:
            try:
                event = channel.receive_nowait()
            except trio.WouldBlock:
                return seen
            seen.append(f"{event['Action']} {event['id']}")

    return so_far


@asynccontextmanager
async def streaming_published(
    client: DockerClient, lifecycle: RecordingLifecycle
) -> AsyncIterator[tuple[DockerStatus, Callable[[], list[str]]]]:
    """`streaming`, with a subscriber of every event it publishes: (status, published)."""
    fanout = EventFanout()
    with fanout.subscribe("test", lambda event: True) as channel:
        async with streaming(client, lifecycle, fanout=fanout) as status:
            yield status, _published(channel)


async def test_each_handled_event_is_published_once_despite_the_replay(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming_published(fake_client, lifecycle) as (status, published):
        container = fake_docker.run("fhtest-published")
        await wait_for(lambda: published() == [f"start {container}"])
        fake_docker.drop_streams()  # the replay (since that start) repeats it
        await wait_for(lambda: status.reconnects == 1)
        fake_docker.kill(container)
        await wait_for(lambda: len(published()) == 2)
        await trio.sleep(0.05)
        assert published() == [f"start {container}", f"die {container}"]


async def test_a_reconnect_before_any_event_replays_since_the_first_subscription(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    # The reconcile repairs the lifecycle whatever the `since`, but the subscribers have only
    # the events: without a resume point the events of the gap would never reach them.
    async with streaming_published(fake_client, lifecycle) as (status, published):
        await lose_the_stream(fake_docker, status)
        container = fake_docker.run("fhtest-gap", publish=False)
        fake_docker.kill(container)
        await fake_docker.start_listening()
        await wait_for(lambda: len(published()) == 2)
        assert status.reconnects == 1
        assert published() == [f"start {container}", f"die {container}"]


async def test_events_missed_while_silent_come_back_by_replay_after_a_drop(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        fake_docker.emit("die", "e" * 64)
        await wait_for(lambda: status.events_processed == 1)
        fake_docker.silent = True
        container = fake_docker.run("fhtest-silent")
        fake_docker.silent = False
        fake_docker.drop_streams()
        await wait_for(lambda: lifecycle.tty(container) is not None)


async def test_stale_die_of_a_restarted_container_keeps_its_tty(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        container = await run_managed(fake_docker, lifecycle, "fhtest-restart")
        await fake_docker.stop_listening()
        fake_docker.kill(container)  # die + start happen while we are away:
        fake_docker.start(container)  # the replay brings a die older than the listing
        await fake_docker.start_listening()
        await wait_for(lambda: status.reconnects == 1 and status.events_processed >= 3)
    assert ("gone", container) not in lifecycle.calls
    assert lifecycle.tty(container) == "10"


async def test_a_die_older_than_the_listing_is_checked_not_obeyed(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    """A container restarted while the service started (chaos seed 3002): the listing
    already showed its new run, and the restart's die, delivered after the adoption, took
    the TTY of a container alive all along. What happened before the listing, the listing
    shows: such a die is checked with an inspect."""
    container = fake_docker.run("fhtest-adopted")
    before_the_listing = time.time_ns()
    async with streaming(fake_client, lifecycle) as status:
        await wait_for(lambda: lifecycle.tty(container) is not None)  # adopted
        fake_docker.emit("die", container, time_nano=before_the_listing)
        await wait_for(lambda: status.events_processed >= 1)
    assert ("gone", container) not in lifecycle.calls
    assert lifecycle.tty(container) == "10"


async def test_a_die_delivered_after_the_containers_next_start_keeps_its_files(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    # An engine that reorders (chaos `reorder_events`): the restart's start comes first,
    # the die of the run before it last. Acted on blindly, that die would remove a live
    # container's directory and TTY; it is checked against the present state instead.
    async with streaming(fake_client, lifecycle) as status:
        container = await run_managed(fake_docker, lifecycle, "fhtest-reordered")
        handled = status.events_processed
        fake_docker.silent = True
        fake_docker.kill(container)
        fake_docker.start(container)
        fake_docker.silent = False
        restarted_at = time.time_ns()
        fake_docker.emit("start", container, time_nano=restarted_at)
        fake_docker.emit("die", container, time_nano=restarted_at - 1_000)
        await wait_for(lambda: status.events_processed == handled + 2)
    assert ("gone", container) not in lifecycle.calls
    assert lifecycle.tty(container) == "10"


def test_run_starts_judges_a_die_by_its_containers_latest_start() -> None:
    starts = RunStarts(window=2)

    def event(action: str, container: str, at: int) -> dict[str, Any]:
        return {"Action": action, "Actor": {"ID": container}, "timeNano": at}

    starts.note(event("start", "a", 10))
    assert starts.outdated(event("die", "a", 5))
    assert not starts.outdated(event("die", "a", 15))
    assert not starts.outdated(event("die", "b", 5))  # no start seen: acted on as it comes
    starts.note(event("start", "a", 8))  # an older start changes nothing
    assert starts.outdated(event("die", "a", 9))
    starts.note(event("destroy", "a", 20))
    assert not starts.outdated(event("die", "a", 5))
    for n, name in enumerate("bcd"):
        starts.note(event("start", name, 100 + n))
    assert not starts.outdated(event("die", "b", 1))  # the oldest is forgotten (window 2)
    assert starts.outdated(event("die", "d", 1))


async def test_one_failing_event_does_not_end_the_stream(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        bad = fake_docker.create("fhtest-bad")
        lifecycle.fail_ids.add(bad)
        fake_docker.start(bad)
        await run_managed(fake_docker, lifecycle, "fhtest-good")
        assert status.connected
        assert status.reconnects == 0


async def test_an_inspect_error_for_one_start_is_retried_by_a_reconcile_soon(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with streaming(fake_client, lifecycle, bound=60) as status:
        container = fake_docker.create("fhtest-inspect-error")
        fake_docker.fail_inspect(container, 500, times=1)
        fake_docker.start(container)
        started = trio.current_time()
        await wait_for(lambda: lifecycle.tty(container) is not None, step=0.1)
        # Not a reconnect, not the periodic reconcile 300 s on: the one brought forward.
        assert trio.current_time() - started == pytest.approx(RETRY, abs=0.2)
        assert status.connected
        assert status.reconnects == 0
    assert lifecycle.calls[-1] == ("reconciled", container)


async def test_one_containers_failing_inspect_never_makes_docker_unreachable(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # dockerd serves everything but one container's inspect (500, 409): that is the
    # container's problem. Before, the adoption's listing raised, the session never got
    # ready, and the whole service went down as "Docker unreachable" after the budget.
    broken = fake_docker.run("fhtest-broken")
    fake_docker.fail_inspect(broken, 500)
    fine = fake_docker.run("fhtest-fine")
    async with streaming(fake_client, lifecycle, unreachable_budget=60.0, bound=1000) as status:
        assert {lifecycle.tty(broken), lifecycle.tty(fine)} == {"10", "11"}
        broken_tty = lifecycle.tty(broken)
        conflicted = fake_docker.create("fhtest-conflict")
        fake_docker.fail_inspect(conflicted, 409)
        fake_docker.start(conflicted)
        await trio.sleep(700)  # two periodic reconciles, ten budgets
        assert status.connected
        assert status.reconnects == 0
        assert lifecycle.tty(conflicted) == "12"  # judged by its listing entry
        assert lifecycle.tty(broken) == broken_tty
        port = (lifecycle.mappings / conflicted / "hostPort_for_my_32262_tcp").read_text()
        assert port == fake_docker.containers[conflicted].ports["32262/tcp"][0]["HostPort"]


async def test_listing_errors_at_start_up_are_retried_before_started(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake_docker.fail(r"GET /containers/json", 500, times=3)
    container = fake_docker.run("fhtest-retry")
    async with streaming(fake_client, lifecycle, bound=60) as status:
        assert lifecycle.tty(container) == "10"
        assert status.reconnects == 0  # never connected before: not a reconnect
    assert fake_docker.requests.count("GET /containers/json") == 4
    assert [c[0] for c in lifecycle.calls] == ["adopt"]


async def test_a_container_gone_between_list_and_inspect_is_left_out(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    vanishing = fake_docker.run("fhtest-vanishing")
    staying = fake_docker.run("fhtest-staying")
    fake_docker.fail(rf"GET /containers/{vanishing}/json", 404, times=1)
    with trio.fail_after(10):
        async with event_stream_running(fake_client, lifecycle, DockerStatus()):
            pass
    assert lifecycle.calls[0] == ("adopt", staying)


async def test_a_burst_is_processed_without_losing_events(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle, bound=20) as status:
        await fake_docker.burst(2000)
        await wait_for(lambda: status.events_processed == 2000)
    assert fake_docker.dropped_events == 0


async def test_periodic_reconcile_catches_what_a_silent_stream_missed(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with streaming(fake_client, lifecycle, reconcile_interval=300.0, bound=400):
        fake_docker.silent = True
        container = fake_docker.run("fhtest-periodic")
        start = trio.current_time()
        await wait_for(lambda: lifecycle.tty(container) is not None, step=1.0)
        assert 270 <= trio.current_time() - start <= 332


async def test_unreachable_beyond_the_budget_is_fatal(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with streaming_until_fatal(fake_client, lifecycle, unreachable_budget=120.0) as status:
        await fake_docker.stop_listening()
        await trio.sleep(90)  # down for 90 s, then back: the budget starts again
        await fake_docker.start_listening()
        await wait_for(lambda: status.connected)
        await fake_docker.stop_listening()
        lost_at = trio.current_time()
        await trio.sleep(1000)
    assert not status.connected
    assert 120 <= trio.current_time() - lost_at <= 121


async def test_a_wedged_dockerd_is_noticed_by_the_periodic_reconcile_and_is_fatal(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with streaming_until_fatal(fake_client, lifecycle, unreachable_budget=60.0) as status:
        fake_docker.hang = True  # the open stream stays up but silent; nothing answers
        await trio.sleep(1000)
    assert not status.connected
    # Lost at the reconcile (300 s ± 30 s, then its 10 s timeout), fatal 60 s later.
    assert 270 + 10 + 60 <= trio.current_time() <= 330 + 10 + 60 + 1


async def test_a_dockerd_that_comes_back_wedged_is_fatal_at_the_budget_not_later(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Refused first (the budget starts), then it listens again but never answers: an attempt
    # hanging on its request timeout must not carry the fatal verdict past the budget.
    await fake_docker.stop_listening()
    fake_docker.hang = True
    with (
        trio.fail_after(100),
        pytest.RaisesGroup(DockerUnreachableFatal, flatten_subgroups=True),
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    run_event_stream,
                    fake_client,
                    lifecycle,
                    unreachable_budget=30.0,
                    status=DockerStatus(),
                )
            )
            await trio.sleep(1)
            await fake_docker.start_listening()
    assert trio.current_time() == pytest.approx(30.0, abs=0.01)


async def test_unreachable_at_start_up_is_fatal_after_the_budget(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    await fake_docker.stop_listening()
    with trio.fail_after(100), pytest.raises(DockerUnreachableFatal) as fatal:
        await run_event_stream(
            fake_client, lifecycle, unreachable_budget=30.0, status=DockerStatus()
        )
    assert "refused" in repr(fatal.value.last_error)
    # The traceback of the last failure travels with the fatal error (Sentry, the log).
    assert fatal.value.__cause__ is fatal.value.last_error
    assert trio.current_time() == pytest.approx(30.0, abs=0.01)


def test_action_suffixes_are_stripped() -> None:
    assert _action({"Action": "exec_start: sh -c x"}) == "exec_start"
    assert _action({"status": "start"}) == "start"
    assert _action({}) == ""


def test_cursor_resumes_at_the_last_time_and_drops_repeats() -> None:
    cursor = EventCursor(window=4)
    event = {"Action": "start", "id": "a", "timeNano": 1_700_000_000_000_000_123}
    assert cursor.since is None
    assert not cursor.handled_before(event)
    assert cursor.since is None  # looked at, not handled yet: the resume point stays
    cursor.record(event)
    assert cursor.handled_before(dict(event))
    assert not cursor.handled_before({**event, "Action": "die"})  # same time, other action
    cursor.record({**event, "timeNano": 5})  # clock went back: still remembered
    assert cursor.handled_before({**event, "timeNano": 5})
    assert cursor.since == "1700000000.000000123"
    assert format_since(5) == "0.000000005"


async def test_a_stream_that_drops_at_once_is_reconnected_with_growing_backoff(
    lifecycle: RecordingLifecycle, autojump_clock: trio.testing.MockClock
) -> None:
    # A dockerd (or a proxy in front of it) that answers every call but ends each `/events`
    # response at once: every connection becomes "ready", yet none lasts.
    subscriptions: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            subscriptions.append(trio.current_time())
            return httpx.Response(200, stream=EmptyStream())
        return httpx.Response(200, json=[])

    status = DockerStatus()
    async with DockerClient("/unused", transport=httpx.MockTransport(handler)) as client:
        with trio.move_on_after(60):
            await run_event_stream(client, lifecycle, unreachable_budget=120.0, status=status)
    # Backoff 0.1 s doubling to its 5 s cap (full jitter): a few dozen reconnects a minute
    # (60 would need the jitter ~7 standard deviations low), not one every ~0.1 s (which a
    # reset on every successful subscription gave: ~800).
    assert 5 <= len(subscriptions) <= 60
    assert status.reconnects == len(subscriptions) - 1


def files(lifecycle: RecordingLifecycle, container_id: str) -> dict[str, str]:
    directory = lifecycle.mappings / container_id
    if not directory.is_dir():
        return {}
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


async def test_a_paused_container_keeps_its_tty_and_files_across_reconciles(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    # Contract §2: paused is live. Docker's listing filtered on status=running leaves a
    # paused container out; a reconcile built on it took the container for gone.
    async with streaming(fake_client, lifecycle) as status:
        paused = await run_managed(fake_docker, lifecycle, "fhtest-paused")
        record = lifecycle.registry.get(paused)
        assert record is not None
        await lifecycle.inner.set_start_values(record.host_port, dpi=144)
        before = files(lifecycle, paused)
        assert before["tty"] == "10"
        assert before[".ready"] == ".ready"
        fake_docker.pause(paused)
        fake_docker.drop_streams()  # the reconnect reconciles with the paused container
        await wait_for(lambda: status.reconnects == 1)
        other = await run_managed(fake_docker, lifecycle, "fhtest-other")
        assert lifecycle.tty(other) == "11"  # the paused container's TTY is not free
        assert files(lifecycle, paused) == before
        fake_docker.unpause(paused)
        fake_docker.drop_streams()
        await wait_for(lambda: status.reconnects == 2)
        assert files(lifecycle, paused) == before
        assert [r.tty for r in lifecycle.registry.records() if r.id == paused] == [10]
    assert ("gone", paused) not in lifecycle.calls


async def test_a_paused_container_is_adopted_with_its_tty_and_files_after_a_restart(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, tmp_path: Path
) -> None:
    first = RecordingLifecycle(tmp_path / "containerResourceMappings")
    with trio.fail_after(10):
        async with event_stream_running(fake_client, first, DockerStatus()):
            fake_docker.run("fhtest-low")  # holds tty 10, so the paused one is not the lowest
            paused = fake_docker.run("fhtest-paused")
            await wait_for(lambda: first.tty(paused) is not None)
            record = first.registry.get(paused)
            assert record is not None
            await first.inner.set_start_values(record.host_port, dpi=96)
            fake_docker.pause(paused)
        before = files(first, paused)
        assert before["tty"] == "11"
        assert before["DPI"] == "96"
        restarted = RecordingLifecycle(first.mappings)
        status = DockerStatus()
        async with event_stream_running(fake_client, restarted, status):
            assert files(restarted, paused) == before
            fake_docker.unpause(paused)
            newcomer = fake_docker.run("fhtest-newcomer")
            await wait_for(lambda: restarted.tty(newcomer) is not None)
            assert restarted.tty(newcomer) == "12"
            assert files(restarted, paused) == before
            assert [r.tty for r in restarted.registry.records() if r.id == paused] == [11]


def reconciles(lifecycle: RecordingLifecycle) -> list[str]:
    return [name for name, _ in lifecycle.calls if name in ("adopt", "reconcile")]


# The two tests below show what only the `since` replay can do: the reconcile that follows a
# reconnect fails once, so nothing but the replayed events can tell what happened meanwhile.
# (Checked: with `since` forced to None in `_EventStream.session`, both fail.)


async def test_an_event_cut_short_by_a_lost_dockerd_is_replayed(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        first = fake_docker.run("fhtest-first")  # gives the cursor a resume point
        await wait_for(lambda: lifecycle.tty(first) is not None)
        second = fake_docker.create("fhtest-second")
        # dockerd is lost while the start is being handled (its inspect gets no answer)...
        fake_docker.cut(rf"^GET /containers/{second}/json$", times=1)
        # ...and the reconnect's listing fails: only the replayed start can bring it back.
        fake_docker.fail(r"^GET /containers/json$", 500, times=1)
        fake_docker.start(second)
        await wait_for(lambda: lifecycle.tty(second) is not None)
        assert status.reconnects == 1
        assert status.connected
    # Handled by the replay: the start was not recorded as handled before it was.
    assert reconciles(lifecycle) == ["adopt"]
    assert lifecycle.calls.count(("running", second)) == 1


async def test_a_die_while_disconnected_is_replayed_when_the_listing_fails(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    async with streaming(fake_client, lifecycle) as status:
        gone = await run_managed(fake_docker, lifecycle, "fhtest-gone")
        await lose_the_stream(fake_docker, status)
        fake_docker.remove(gone)  # kill, die, destroy while we are away
        fake_docker.fail(r"^GET /containers/json$", 500, times=1)
        await fake_docker.start_listening()
        await wait_for(lambda: not (lifecycle.mappings / gone).exists())
        assert status.reconnects == 1
    assert reconciles(lifecycle) == ["adopt"]
    assert lifecycle.registry.free_ttys == 54


def inspects(engine: FakeDockerEngine, container_id: str = "") -> int:
    if container_id:
        return engine.requests.count(f"GET /containers/{container_id}/json")
    return sum(1 for r in engine.requests if r.startswith("GET /containers/") and len(r) > 70)


async def test_the_periodic_reconcile_does_not_hold_new_events(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(400):
        async with event_stream_running(fake_client, lifecycle, DockerStatus()):
            first = await run_managed(fake_docker, lifecycle, "fhtest-first")
            gate = fake_docker.hold(r"^GET /containers/json$")  # the listing comes back late
            await wait_for(lambda: fake_docker.requests.count("GET /containers/json") == 2, 1.0)
            # The periodic reconcile waits for its listing; a start meanwhile is handled now.
            late = fake_docker.run("fhtest-late")
            with trio.fail_after(1):
                await wait_for(lambda: lifecycle.tty(late) is not None)
            gate.set()
            await wait_for(lambda: lifecycle.calls[-1][0] == "reconciled")
            # The listing predates `late`'s start: its view must not take `late`'s TTY away.
            assert lifecycle.calls[-1] == ("reconciled", first)
            assert lifecycle.tty(late) == "11"
            assert lifecycle.registry.get(late) is not None


async def test_an_event_newer_than_the_reconciles_inspect_wins(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(400):
        async with event_stream_running(fake_client, lifecycle, DockerStatus()):
            fake_docker.silent = True
            victim = fake_docker.run("fhtest-victim")  # its start is missed: unknown to us
            fake_docker.silent = False
            # The periodic reconcile confirms it with an inspect that says "running", but
            # whose answer reaches us only after the die has been handled.
            gate = fake_docker.hold(rf"^GET /containers/{victim}/json$")
            await wait_for(lambda: inspects(fake_docker, victim) == 1, step=1.0)
            fake_docker.kill(victim)
            with trio.fail_after(1):
                await wait_for(lambda: ("gone", victim) in lifecycle.calls)
            gate.set()
            await wait_for(lambda: lifecycle.calls[-1][0] == "reconciled")
            assert lifecycle.calls[-1] == ("reconciled", victim)  # its stale view...
    assert not (lifecycle.mappings / victim).exists()  # ...is not applied
    assert lifecycle.registry.records() == []
    assert lifecycle.registry.free_ttys == 54


async def test_a_steady_reconcile_is_one_listing(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    containers = [fake_docker.run() for _ in range(10)]
    with trio.fail_after(400):
        async with event_stream_running(fake_client, lifecycle, DockerStatus()):
            before = len(fake_docker.requests)
            await wait_for(lambda: lifecycle.calls[-1][0] == "reconciled", step=1.0)
    # Every container is known with the port the listing shows: nothing to confirm.
    assert fake_docker.requests[before:] == ["GET /containers/json"]
    assert len(lifecycle.registry.records()) == len(containers)


async def test_the_reconcile_inspects_concurrently_within_a_bound(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(400):
        async with event_stream_running(fake_client, lifecycle, DockerStatus()):
            fake_docker.silent = True  # unknown to us until the periodic reconcile
            containers = [fake_docker.run() for _ in range(3 * INSPECT_CONCURRENCY)]
            fake_docker.silent = False
            gate = fake_docker.hold(r"^GET /containers/[0-9a-f]{64}/json$", times=None)
            await wait_for(lambda: inspects(fake_docker) > 0, step=1.0)
            await trio.sleep(1)
            assert inspects(fake_docker) == INSPECT_CONCURRENCY
            gate.set()
            await wait_for(lambda: lifecycle.calls[-1][0] == "reconciled")
            assert inspects(fake_docker) == len(containers)
    assert len(lifecycle.registry.records()) == len(containers)


async def test_one_containers_hanging_inspect_is_not_docker_unreachable(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # dockerd's inspect waits for the container's lock (a stuck kill can hold it): the
    # request times out while every other call is answered. A timeout of the whole engine
    # counts toward the budget; this one is the container's problem.
    stuck = fake_docker.create("fhtest-stuck")
    fake_docker.hold(rf"^GET /containers/{stuck}/json$", times=None)  # never answered
    async with streaming(fake_client, lifecycle, unreachable_budget=30.0, bound=1000) as status:
        fake_docker.start(stuck)
        other = fake_docker.run("fhtest-other")
        await trio.sleep(200)
        assert status.connected
        assert status.reconnects == 0
        assert lifecycle.tty(other) == "10"  # handled once the stuck start gave up
        assert lifecycle.tty(stuck) == "11"  # judged by the listing at the reconcile
