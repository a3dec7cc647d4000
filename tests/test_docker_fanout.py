"""Tests of fractal_hostd.docker.fanout: the events of the one `/events` subscription handed to
the other tasks. Pure (no I/O): publishing is synchronous and never waits."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import trio

from fractal_hostd.docker.fanout import EventFanout


def _event(action: str, number: int = 0) -> dict[str, Any]:
    return {"Type": "container", "Action": action, "timeNano": number}


def _is(action: str) -> Callable[[Mapping[str, Any]], bool]:
    def wanted(event: Mapping[str, Any]) -> bool:
        return bool(event["Action"] == action)

    return wanted


def _drain(channel: trio.MemoryReceiveChannel[dict[str, Any]]) -> list[dict[str, Any]]:
    received = []
    while True:
        try:
            received.append(channel.receive_nowait())
        except trio.WouldBlock:
            return received


async def test_each_subscriber_gets_the_events_it_wants_in_order() -> None:
    fanout = EventFanout()
    with (
        fanout.subscribe("deaths", _is("die")) as deaths,
        fanout.subscribe("starts", _is("start")) as starts,
    ):
        for number, action in enumerate(["start", "die", "destroy", "die"]):
            fanout.publish(_event(action, number))
        assert _drain(deaths) == [_event("die", 1), _event("die", 3)]
        assert _drain(starts) == [_event("start", 0)]


async def test_events_before_the_subscription_or_after_it_ended_are_not_received() -> None:
    fanout = EventFanout()
    fanout.publish(_event("die", 0))  # nobody listens: dropped silently
    with fanout.subscribe("deaths", _is("die")) as deaths:
        assert fanout.subscribers == 1
        fanout.publish(_event("die", 1))
        assert _drain(deaths) == [_event("die", 1)]
    assert fanout.subscribers == 0
    fanout.publish(_event("die", 2))  # the ended subscription is gone, no error
    with pytest.raises(trio.ClosedResourceError):
        deaths.receive_nowait()


async def test_a_full_subscriber_loses_events_with_a_log_and_never_holds_the_publisher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fanout = EventFanout()
    caplog.set_level(logging.WARNING, logger="fractal_hostd.docker.fanout")
    with (
        fanout.subscribe("slow", _is("die"), buffer=2) as slow,
        fanout.subscribe("other", _is("die"), buffer=100) as other,
    ):
        for number in range(5):
            fanout.publish(_event("die", number))  # synchronous: it cannot wait for "slow"
        assert _drain(slow) == [_event("die", 0), _event("die", 1)]
        assert len(_drain(other)) == 5  # the other subscriber lost nothing
        warnings = [r.getMessage() for r in caplog.records]
        assert warnings == [
            "event subscriber slow is behind (2 events buffered): dropping its events"
        ]
        fanout.publish(_event("die", 5))
        assert _drain(slow) == [_event("die", 5)]
        assert (
            caplog.records[-1].getMessage()
            == "event subscriber slow caught up after losing 3 events"
        )


async def test_a_failing_predicate_costs_neither_the_publisher_nor_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: Mapping[str, Any]) -> bool:
        raise KeyError("Actor")

    fanout = EventFanout()
    with fanout.subscribe("broken", broken) as _, fanout.subscribe("deaths", _is("die")) as deaths:
        with caplog.at_level(logging.ERROR, logger="fractal_hostd.docker.fanout"):
            fanout.publish(_event("die"))
        assert _drain(deaths) == [_event("die")]
    assert "event subscriber broken failed to filter an event" in caplog.text
