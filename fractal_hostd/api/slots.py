"""Request slots: the Docker event path never queues behind a crowd of API requests.

The API and the Docker event path share one trio loop, and trio runs every runnable task once
per scheduling batch. Under 50 busy keep-alive connections a batch holds ~50 request steps of
0.1-1 ms each, and a container start needs several steps (read the event, inspect, write the
files), each waiting a whole batch: start -> tty p50 was 3-6x idle (bench/bench_priority.py).

So at most `limit` requests run their handler at once; the rest wait their turn, blocked,
outside the batches. HTTP/1.1 keep-alive clients send their next request only after the
answer, so a waiting request leaves its connection idle too. The event path then shares each
batch with a few requests only.

Two slots, not one: with one, each step of the lone handler was a scheduling batch of its
own (an `epoll_wait` and a pass of trio's run loop), 10-17 % of a `/status` request's CPU.
With two, `/status` went from 0.73x to 0.79-0.94x a bare quart-trio app and `/health` from
0.78x to 0.82-1.0x, and start -> tty under a 50-connection `/health` load stayed within its
goal (1.2-1.4x idle; 1.9x with four slots). A start holds the API besides
(fractal_hostd/event_priority.py), which keeps the worker thread's part of it fast.

A request that waits on I/O (a container not yet known, its files' fsync in a worker thread,
a client that reads slowly) must not hold a slot for that long: the limit is on CPU-bound
work, not on waits. One holding its slot for `lease` seconds gives it up (a reaper task
releases it); the request runs on without one.
"""

from __future__ import annotations

import itertools

import trio
from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from fractal_hostd.event_priority import EventPriority, current_waiter

DEFAULT_REQUEST_SLOTS = 2
DEFAULT_LEASE = 0.005


class RequestSlots:
    def __init__(self, limit: int = DEFAULT_REQUEST_SLOTS, lease: float = DEFAULT_LEASE) -> None:
        self._free = trio.Semaphore(limit)
        self._lease = lease
        self._deadlines: dict[int, float] = {}  # slot held -> when the reaper takes it back
        self._tokens = itertools.count()
        self._held_changed = trio.Event()
        self._unlimited = False
        self.reaped = 0

    async def acquire(self) -> int:
        if self._unlimited:
            return -1  # no slot to give back
        await self._free.acquire()
        token = next(self._tokens)
        self._deadlines[token] = trio.current_time() + self._lease
        if len(self._deadlines) == 1:
            self._held_changed.set()
        return token

    def release(self, token: int) -> None:
        if self._deadlines.pop(token, None) is not None:
            self._free.release()

    def open_all(self) -> None:
        """From now on nobody waits for a slot, and those waiting go in.

        For the drain at shutdown: the reaper has stopped with the listeners, so a request
        waiting for its container would hold its slot, and those queued behind it would be
        cancelled at the graceful timeout instead of answered.
        """
        self._unlimited = True
        for _ in range(self._free.statistics().tasks_waiting):
            self._free.release()

    async def run(self) -> None:
        """Reap slots held past their lease; runs until cancelled (the server owns it)."""
        while True:
            if not self._deadlines:
                await self._held_changed.wait()
                self._held_changed = trio.Event()
                continue
            await trio.sleep_until(min(self._deadlines.values()))
            now = trio.current_time()
            for token, deadline in list(self._deadlines.items()):
                if deadline <= now:
                    self.reaped += 1
                    self.release(token)


class SlottedApp:
    """ASGI middleware: each HTTP request runs its handler holding one of `slots`, and not
    while `priority` holds the API (see fractal_hostd.event_priority).

    A request waits for the hold to end after it has its slot, not before: the requests
    queued for a slot had already passed a check made before, and ran one after the other
    through the hold (measured: ~55 ms of the loop's CPU after a hold began, against <1 ms).
    """

    def __init__(
        self, app: ASGIFramework, slots: RequestSlots, priority: EventPriority | None = None
    ) -> None:
        self._app = app
        self._slots = slots
        self._priority = priority or EventPriority()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":  # lifespan: never waits for a slot
            await self._app(scope, receive, send)
            return
        slot = _RequestSlot(self._slots, self._priority)
        # Seen by the handler's tasks (a nursery's children copy the context at their start).
        context = current_waiter.set(slot)
        try:
            await slot.take_again()
            await self._app(scope, receive, send)
        finally:
            current_waiter.reset(context)
            slot.give_up()


class _RequestSlot:
    """The slot of one request, given up while it waits (fractal_hostd.event_priority)."""

    def __init__(self, slots: RequestSlots, priority: EventPriority) -> None:
        self._slots = slots
        self._priority = priority
        self._token: int | None = None

    async def take_again(self) -> None:
        self._token = await self._slots.acquire()
        # After the slot, not before: see SlottedApp.
        await self._priority.wait_turn()

    def give_up(self) -> None:
        if self._token is not None:
            self._slots.release(self._token)
            self._token = None
