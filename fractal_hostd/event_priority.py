"""While a container starts, API request handlers wait (bounded); a waiting request lets go.

The API and the Docker event path share one process. A start's files are written in a
worker thread (its fsyncs must not stall the event loop), and that thread needs the GIL back
after each of its ~30 system calls: under 50 keep-alive connections on `/health` the event
loop held the GIL nearly all the time, the write took ~10 ms instead of ~2, and start ->
`tty` p50 was 2.2-2.9x idle (bench/bench_priority.py). The request slots (api/slots.py) keep
the loop's own part of a start fast, but not the thread's.

So the API is held (`hold`) while a start event is handled, from its inspect to its files
(docker/events.py), and while the lifecycle writes a new container's first files (a start a
reconcile found); a request that has its slot waits (`wait_turn`) before its handler runs.
The requests already in their handlers finish, the loop goes idle (blocked in epoll_wait,
without the GIL) and the start runs at its idle speed: p50 1.06-1.4x idle under that load.

The API never starves: a hold holds for at most `limit` seconds (a write slower than that
waits on the disk, not on the GIL, and holding longer would gain nothing), and after a hold
the API gets at least as long as that hold before the next one takes effect, so container
starts can take at most half of the API's time, even in a burst.

The other way round, a request about to wait (for a container's lock, for its files' fsyncs
in a worker thread) says so with `waiting()`: it gives its request slot up at once instead of
holding it for the slots' lease while it computes nothing, and takes one again after, for
its answer. Concurrent `set_container_dpi` requests for one container then all reach its
lock and share one write: ~180 -> ~450 answers/s under 50 connections (bench_priority).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Protocol

import trio

# Twice to four times an idle start, inspect to files (bench_priority).
DEFAULT_HOLD_LIMIT = 0.02


class Waiter(Protocol):
    """What a task that is about to wait does (an API request: give its slot up, then take
    one again after; api/slots.py)."""

    def give_up(self) -> None: ...

    async def take_again(self) -> None: ...


current_waiter: ContextVar[Waiter | None] = ContextVar("current_waiter", default=None)


@asynccontextmanager
async def waiting() -> AsyncIterator[None]:
    """The body waits for I/O or a lock, it does not compute: an API request gives its
    request slot up for it, and takes one again after (a hold of the API then holds it too).
    Anywhere else, nothing happens."""
    waiter = current_waiter.get()
    if waiter is None:
        yield
        return
    waiter.give_up()
    try:
        yield
    finally:
        await waiter.take_again()


class EventPriority:
    """The API's hold for container starts (see the module doc)."""

    def __init__(self, *, limit: float = DEFAULT_HOLD_LIMIT) -> None:
        self._limit = limit
        self._holders = 0  # holds in progress (several containers may start at once)
        self._began = -math.inf  # when the current hold began
        self._until = -math.inf  # when the current hold stops holding the API
        self._next_allowed = -math.inf  # the API's time after the last hold ends here
        self._ended = trio.Event()
        self.holds = 0  # holds that held the API (for tests and /metrics)
        self.held_seconds = 0.0

    @property
    def requests_waiting(self) -> int:
        """Requests waiting for the current hold to end."""
        return self._ended.statistics().tasks_waiting

    @property
    def holding(self) -> bool:
        """Whether a request that asks now waits."""
        return self._holders > 0 and trio.current_time() < self._until

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the API for the body (bounded: see the module doc). Concurrent holds share
        one: it ends with the last of them."""
        if self._holders == 0:
            now = trio.current_time()
            self._began = now
            self._until = now + self._limit if now >= self._next_allowed else now
            if self._until > now:
                self.holds += 1
        self._holders += 1
        try:
            yield
        finally:
            self._holders -= 1
            if self._holders == 0:
                self._end()

    def _end(self) -> None:
        now = trio.current_time()
        held = max(0.0, min(now, self._until) - self._began)
        self.held_seconds += held
        self._next_allowed = now + held
        self._until = -math.inf
        self._ended.set()
        self._ended = trio.Event()

    async def wait_turn(self) -> None:
        """Return once no hold is in force: at once, without a checkpoint, when none is
        (the request path's common case)."""
        while self.holding:
            with trio.move_on_at(self._until):
                await self._ended.wait()
