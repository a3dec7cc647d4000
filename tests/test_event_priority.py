"""EventPriority: a starting container's write holds the API, bounded in time and in share.

Virtual time (autojump_clock) throughout: the bounds are timing rules.
"""

from __future__ import annotations

import trio

from fractal_hostd.event_priority import EventPriority


async def _turn_at(priority: EventPriority) -> float:
    await priority.wait_turn()
    return trio.current_time()


async def test_no_hold_no_wait(autojump_clock: trio.abc.Clock) -> None:
    priority = EventPriority(limit=1.0)
    began = trio.current_time()
    assert await _turn_at(priority) == began
    assert priority.holds == 0


async def test_a_request_waits_until_the_hold_ends(autojump_clock: trio.abc.Clock) -> None:
    priority = EventPriority(limit=1.0)
    turns: list[float] = []

    async def request() -> None:
        turns.append(await _turn_at(priority))

    began = trio.current_time()
    async with trio.open_nursery() as nursery:
        with priority.hold():
            assert priority.holding
            nursery.start_soon(request)
            await trio.sleep(0.3)  # the write
            assert turns == []
        assert not priority.holding
    assert turns == [began + 0.3]
    assert priority.holds == 1
    assert abs(priority.held_seconds - 0.3) < 1e-9


async def test_a_hold_holds_for_its_limit_at_most(autojump_clock: trio.abc.Clock) -> None:
    """A write stuck on a slow disk gains nothing from a held API: it goes on alone."""
    priority = EventPriority(limit=0.02)
    began = trio.current_time()
    with priority.hold():
        turn = await _turn_at(priority)
        await trio.sleep(5)
    assert turn == began + 0.02
    assert abs(priority.held_seconds - 0.02) < 1e-9


async def test_after_a_hold_the_api_gets_as_long_before_the_next(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Container starts in a burst take at most half of the API's time."""
    priority = EventPriority(limit=0.02)
    with priority.hold():
        await trio.sleep(0.01)
    ended = trio.current_time()
    await trio.sleep(0.005)
    with priority.hold():  # within the API's turn: holds nothing
        assert not priority.holding
        assert await _turn_at(priority) == ended + 0.005
        await trio.sleep(0.01)
    await trio.sleep(0.01)  # the second, unheld, earned the API nothing: its turn is over
    with priority.hold():
        assert priority.holding
    assert priority.holds == 2


async def test_concurrent_holds_end_with_the_last(autojump_clock: trio.abc.Clock) -> None:
    priority = EventPriority(limit=1.0)
    began = trio.current_time()

    async def write(duration: float) -> None:
        with priority.hold():
            await trio.sleep(duration)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, 0.1)
        nursery.start_soon(write, 0.3)
        await trio.sleep(0.05)
        assert await _turn_at(priority) == began + 0.3
    assert priority.holds == 1
