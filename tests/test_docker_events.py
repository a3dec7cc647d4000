"""The Docker event stream task against the fake engine, with the real ContainerLifecycle.

Rules: unix sockets under /tmp only, an absolute `trio.fail_after` around every I/O test,
`autojump_clock` where the test waits through backoff, budgets or reconcile intervals.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from fractal_hostd.containers.info import ContainerInfo
from fractal_hostd.containers.lifecycle import ContainerLifecycle, run_inline
from fractal_hostd.containers.registry import ContainerRegistry
from fractal_hostd.docker.client import DockerClient
from fractal_hostd.docker.cursor import EventCursor, format_since
from fractal_hostd.docker.events import (
    DockerUnreachableFatal,
    _action,
    run_event_stream,
)
from fractal_hostd.hoststate import DockerStatus
from tests.docker_fixtures import EmptyStream, fake_client, fake_docker
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

    async def adopt(self, running: Sequence[ContainerInfo]) -> None:
        self.calls.append(("adopt", ",".join(sorted(i.id for i in running))))
        await self.inner.adopt(running)

    async def reconcile(self, running: Sequence[ContainerInfo]) -> None:
        self.calls.append(("reconcile", ",".join(sorted(i.id for i in running))))
        await self.inner.reconcile(running)

    async def on_running(self, info: ContainerInfo) -> None:
        self.calls.append(("running", info.id))
        if info.id in self.fail_ids:
            raise RuntimeError("lifecycle failure for this container")
        await self.inner.on_running(info)

    async def on_gone(self, container_id: str) -> None:
        self.calls.append(("gone", container_id))
        await self.inner.on_gone(container_id)

    def tty(self, container_id: str) -> str | None:
        path = self.mappings / container_id / "tty"
        return path.read_text() if path.exists() else None


@pytest.fixture
def lifecycle(tmp_path: Path) -> RecordingLifecycle:
    return RecordingLifecycle(tmp_path / "containerResourceMappings")


@asynccontextmanager
async def event_stream(
    client: DockerClient,
    lifecycle: RecordingLifecycle,
    status: DockerStatus,
    *,
    unreachable_budget: float = 120.0,
    reconcile_interval: float = 300.0,
) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                run_event_stream,
                client,
                lifecycle,
                status=status,
                unreachable_budget=unreachable_budget,
                reconcile_interval=reconcile_interval,
            )
        )
        yield nursery
        nursery.cancel_scope.cancel()


async def wait_for(predicate: Callable[[], bool], step: float = 0.005) -> None:
    while not predicate():
        await trio.sleep(step)


async def test_subscribes_before_listing_then_adopts_running_containers(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    managed = fake_docker.run("fhtest-managed")
    unmanaged = fake_docker.run("fhtest-plain", publish=False)
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
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
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
            first = fake_docker.run("fhtest-1")
            second = fake_docker.run("fhtest-2")
            await wait_for(lambda: lifecycle.tty(second) is not None)
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


async def test_a_start_event_for_a_container_already_removed_is_gone(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
            fake_docker.emit("start", "d" * 64)  # inspect answers 404
            await wait_for(lambda: status.events_processed == 1)
    assert lifecycle.calls[-1] == ("gone", "d" * 64)


async def test_container_started_while_the_stream_was_down_is_handled_after_reconnect(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
            before = fake_docker.run("fhtest-before")
            await wait_for(lambda: lifecycle.tty(before) is not None)
            await fake_docker.stop_listening()
            await wait_for(lambda: not status.connected)
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
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
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


async def test_events_missed_while_silent_come_back_by_replay_after_a_drop(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
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
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
            container = fake_docker.run("fhtest-restart")
            await wait_for(lambda: lifecycle.tty(container) is not None)
            await fake_docker.stop_listening()
            fake_docker.kill(container)  # die + start happen while we are away:
            fake_docker.start(container)  # the replay brings a die older than the listing
            await fake_docker.start_listening()
            await wait_for(lambda: status.reconnects == 1 and status.events_processed >= 3)
    assert ("gone", container) not in lifecycle.calls
    assert lifecycle.tty(container) == "10"


async def test_one_failing_event_does_not_end_the_stream(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
            bad = fake_docker.create("fhtest-bad")
            lifecycle.fail_ids.add(bad)
            fake_docker.start(bad)
            good = fake_docker.run("fhtest-good")
            await wait_for(lambda: lifecycle.tty(good) is not None)
            assert status.connected
            assert status.reconnects == 0


async def test_an_inspect_error_reconnects_and_reconciles(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    status = DockerStatus()
    with trio.fail_after(10):
        async with event_stream(fake_client, lifecycle, status):
            fake_docker.fail(r"GET /containers/[0-9a-f]+/json", 500, times=1)
            container = fake_docker.run("fhtest-inspect-error")
            await wait_for(lambda: lifecycle.tty(container) is not None)
    assert status.reconnects == 1
    assert lifecycle.calls[-1][0] in ("reconcile", "running")


async def test_listing_errors_at_start_up_are_retried_before_started(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake_docker.fail(r"GET /containers/json", 500, times=3)
    container = fake_docker.run("fhtest-retry")
    status = DockerStatus()
    with trio.fail_after(60):
        async with event_stream(fake_client, lifecycle, status):
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
        async with event_stream(fake_client, lifecycle, DockerStatus()):
            pass
    assert lifecycle.calls[0] == ("adopt", staying)


async def test_a_burst_is_processed_without_losing_events(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, lifecycle: RecordingLifecycle
) -> None:
    status = DockerStatus()
    with trio.fail_after(20):
        async with event_stream(fake_client, lifecycle, status):
            await fake_docker.burst(2000)
            await wait_for(lambda: status.events_processed == 2000)
    assert fake_docker.dropped_events == 0


async def test_periodic_reconcile_catches_what_a_silent_stream_missed(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    lifecycle: RecordingLifecycle,
    autojump_clock: trio.testing.MockClock,
) -> None:
    status = DockerStatus()
    with trio.fail_after(400):
        async with event_stream(fake_client, lifecycle, status, reconcile_interval=300.0):
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
    status = DockerStatus()
    with trio.fail_after(1000), pytest.RaisesGroup(DockerUnreachableFatal, flatten_subgroups=True):
        async with event_stream(fake_client, lifecycle, status, unreachable_budget=120.0):
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
    status = DockerStatus()
    with trio.fail_after(1000), pytest.RaisesGroup(DockerUnreachableFatal, flatten_subgroups=True):
        async with event_stream(fake_client, lifecycle, status, unreachable_budget=60.0):
            fake_docker.hang = True  # the open stream stays up but silent; nothing answers
            await trio.sleep(1000)
    assert not status.connected
    # Lost at the reconcile (300 s ± 30 s, then its 10 s timeout), fatal 60 s later.
    assert 270 + 10 + 60 <= trio.current_time() <= 330 + 10 + 60 + 1


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
    assert cursor.accept(event)
    assert not cursor.accept(dict(event))
    assert cursor.accept({**event, "Action": "die"})  # same time, other action: new
    assert cursor.accept({**event, "timeNano": 5})  # clock went back: still remembered
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
