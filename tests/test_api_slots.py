"""Request slots: few requests at once run their handler; a waiting one gives its slot up.

Virtual time (autojump_clock) throughout: the lease is a timing rule.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from fractal_hostd.api.slots import RequestSlots, SlottedApp
from fractal_hostd.event_priority import EventPriority, waiting


async def test_requests_beyond_the_limit_wait_for_a_slot(autojump_clock: trio.abc.Clock) -> None:
    slots = RequestSlots(limit=1, lease=10.0)
    order: list[str] = []

    async def request(name: str, work: float) -> None:
        token = await slots.acquire()
        order.append(f"{name} in")
        await trio.sleep(work)
        order.append(f"{name} out")
        slots.release(token)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slots.run)
        nursery.start_soon(request, "a", 1.0)
        await trio.sleep(0.1)
        nursery.start_soon(request, "b", 1.0)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert order == ["a in", "a out", "b in", "b out"]
    assert slots.reaped == 0


async def test_a_slot_held_past_its_lease_goes_to_the_next_request(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A request waiting for a container (up to FRACTAL_CONTAINER_WAIT) must not hold up
    the others: its slot is reaped after the lease, and its own late release is a no-op."""
    slots = RequestSlots(limit=1, lease=0.005)
    entered: dict[str, float] = {}

    async def request(name: str, work: float) -> None:
        token = await slots.acquire()
        entered[name] = trio.current_time()
        await trio.sleep(work)
        slots.release(token)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slots.run)
        start = trio.current_time()
        nursery.start_soon(request, "waits on a container", 10.0)
        await trio.sleep(0.001)
        nursery.start_soon(request, "quick", 0.001)
        await trio.sleep(20)
        # Both done; the slot came back exactly once: two can no longer run at once.
        assert slots._free.value == 1
        nursery.cancel_scope.cancel()
    assert entered["quick"] - start == 0.005
    assert slots.reaped == 1


async def test_lifespan_never_waits_for_a_slot(autojump_clock: trio.abc.Clock) -> None:
    slots = RequestSlots(limit=1, lease=10.0)
    calls: list[str] = []

    async def app(scope: dict[str, str], receive: object, send: object) -> None:
        calls.append(scope["type"])

    token = await slots.acquire()  # every slot taken
    with trio.fail_after(1):
        await SlottedApp(app, slots)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    slots.release(token)
    with trio.fail_after(1):
        await SlottedApp(app, slots)({"type": "http"}, None, None)  # type: ignore[arg-type]
    assert calls == ["lifespan", "http"]


async def test_at_shutdown_every_request_goes_in(autojump_clock: trio.abc.Clock) -> None:
    """The reaper stops with the listeners; queued requests must not wait for a slot that a
    request waiting for its container holds (they would be cancelled at the graceful timeout)."""
    slots = RequestSlots(limit=1, lease=0.005)  # no reaper running: as during the drain
    holder = await slots.acquire()
    entered: list[float] = []

    async def queued() -> None:
        token = await slots.acquire()
        entered.append(trio.current_time())
        slots.release(token)

    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        nursery.start_soon(queued)
        await trio.sleep(1)
        assert entered == []
        slots.open_all()
        await trio.sleep(0)
        nursery.start_soon(queued)  # and a later one does not wait either
    slots.release(holder)
    assert entered == [start + 1, start + 1]


def requests_to(app: SlottedApp) -> Callable[[str], Awaitable[None]]:
    """An HTTP request for `path` through `app`, as hypercorn would call it."""

    async def request(path: str) -> None:
        await app({"type": "http", "path": path}, None, None)  # type: ignore[arg-type]

    return request


async def test_a_request_with_its_slot_waits_for_a_hold_to_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    """While a starting container's files are written no handler starts, even one that was
    queued for its slot before the hold began (fractal_hostd/event_priority.py)."""
    slots = RequestSlots(limit=1, lease=10.0)
    priority = EventPriority(limit=1.0)
    entered: dict[str, float] = {}

    async def handler(scope: dict[str, str], receive: object, send: object) -> None:
        entered[scope["path"]] = trio.current_time()
        await trio.sleep(0.1)

    request = requests_to(SlottedApp(handler, slots, priority))  # type: ignore[arg-type]

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slots.run)
        nursery.start_soon(request, "/a")
        await trio.sleep(0.01)
        nursery.start_soon(request, "/b")  # queued for the slot /a holds
        await trio.sleep(0.01)
        with priority.hold():
            await trio.sleep(0.5)  # /a finishes meanwhile; /b gets the slot, not its turn
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert entered == {"/a": began, "/b": began + 0.52}


async def test_a_waiting_request_gives_its_slot_up_and_takes_one_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """`waiting()`: the slot goes to the next request at once, not after the lease, and the
    waiter computes its answer only with a slot again."""
    slots = RequestSlots(limit=1, lease=10.0)
    log: list[tuple[str, float]] = []

    async def handler(scope: dict[str, str], receive: object, send: object) -> None:
        name = scope["path"]
        log.append((f"{name} in", trio.current_time()))
        if name == "/a":
            async with waiting():
                await trio.sleep(0.1)  # its lock, its fsyncs
            log.append(("/a answers", trio.current_time()))
        else:
            await trio.sleep(0.5)  # computing, slot held

    request = requests_to(SlottedApp(handler, slots))  # type: ignore[arg-type]

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slots.run)
        nursery.start_soon(request, "/a")
        await trio.sleep(0.01)
        nursery.start_soon(request, "/b")
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert [(what, round(when - began, 3)) for what, when in log] == [
        ("/a in", 0.0),
        ("/b in", 0.01),  # /a gave its slot up while it waited
        ("/a answers", 0.51),  # only once /b gave the one slot back
    ]
    assert slots.reaped == 0


async def test_waiting_outside_a_request_does_nothing() -> None:
    async with waiting():
        await trio.lowlevel.checkpoint()
