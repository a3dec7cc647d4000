"""Hands the events of the one `/events` subscription to the other tasks that need them.

dockerd's event stream is subscribed once, by the event stream task (docker/events.py), which
owns the resume cursor, the reconnect backoff and the unreachable budget. Another task that
needs some events (the ECS-agent watcher: its container's deaths) subscribes here instead of
opening a second `/events` stream with its own cursor and backoff.

Each subscriber has its own bounded trio memory channel and a predicate: only the events it
wants enter its channel. Publishing never waits: a subscriber whose buffer is full loses the
event (logged at WARNING when it starts losing and when it catches up again), so a slow or
stuck subscriber can neither hold the event stream nor make its memory grow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

logger = logging.getLogger(__name__)

Event = dict[str, Any]
Wanted = Callable[[Mapping[str, Any]], bool]


@dataclass
class _Subscriber:
    name: str
    wants: Wanted
    send: trio.MemorySendChannel[Event]
    dropped: int = 0  # lost since it last received one


class EventFanout:
    def __init__(self) -> None:
        self._subscribers: list[_Subscriber] = []

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @contextmanager
    def subscribe(
        self, name: str, wants: Wanted, *, buffer: int = 64
    ) -> Iterator[trio.MemoryReceiveChannel[Event]]:
        """A channel of the published events `wants` accepts, from now until the block ends.

        Subscribe before doing what causes the events awaited (the ECS watcher subscribes,
        then starts its container): an event published in between is then not missed.
        """
        send, receive = trio.open_memory_channel[Event](buffer)
        subscriber = _Subscriber(name, wants, send)
        self._subscribers.append(subscriber)
        try:
            with send, receive:
                yield receive
        finally:
            self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        """Offer the event to every subscriber; never waits."""
        for subscriber in self._subscribers:
            try:
                if not subscriber.wants(event):
                    continue
            except Exception:
                # A predicate's bug must not cost the event stream (or the other subscribers).
                logger.exception("event subscriber %s failed to filter an event", subscriber.name)
                continue
            self._offer(subscriber, event)

    @staticmethod
    def _offer(subscriber: _Subscriber, event: Event) -> None:
        try:
            subscriber.send.send_nowait(event)
        except trio.WouldBlock:
            if subscriber.dropped == 0:
                logger.warning(
                    "event subscriber %s is behind (%d events buffered): dropping its events",
                    subscriber.name,
                    subscriber.send.statistics().current_buffer_used,
                )
            subscriber.dropped += 1
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # its block is ending: it is being removed
        if subscriber.dropped:
            logger.warning(
                "event subscriber %s caught up after losing %d events",
                subscriber.name,
                subscriber.dropped,
            )
            subscriber.dropped = 0
