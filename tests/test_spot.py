"""The spot/rebalance poller.

Test rules: polling schedules in virtual time (autojump_clock) against an IMDS on
httpx.MockTransport; one end-to-end test against the real fake IMDS on 127.0.0.1:0 under an
absolute fail_after.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging

import httpx
import pytest
import trio
import trio.testing

from fractal_hostd.hoststate import DrainNotice, HostState
from fractal_hostd.metadata.imds import ImdsClient
from fractal_hostd.metadata.spot import (
    MalformedNotice,
    parse_rebalance_notice,
    parse_spot_notice,
    run_spot_poller,
)
from tests.fakes.imds import running_fake_imds

SPOT = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


class MockImds:
    """v2 IMDS on MockTransport; `answers` maps a path to (status, body); logs GET times."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, str]] = {}
        self.polls: list[float] = []
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200, text="token")
        if request.url.path == SPOT:
            self.polls.append(trio.current_time())
        status, body = self.answers.get(request.url.path, (404, ""))
        return httpx.Response(status, text=body)


class Drains:
    def __init__(self) -> None:
        self.notices: list[tuple[float, DrainNotice]] = []

    async def __call__(self, notice: DrainNotice) -> None:
        self.notices.append((trio.current_time(), notice))


async def run_poller(imds: MockImds, state: HostState, drains: Drains, seconds: float) -> None:
    client = ImdsClient("http://imds", transport=imds.transport)
    async with client, trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(run_spot_poller, client, state, interval=5, on_drain=drains)
        )
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


async def test_spot_notice_drains_once(autojump_clock: trio.testing.MockClock) -> None:
    imds, drains = MockImds(), Drains()
    state = HostState(version="1", environment="prod")

    async def script() -> None:
        await trio.sleep(12)  # shows up between the polls at 10 and 15
        imds.answers[SPOT] = (200, json.dumps({"action": "terminate", "time": "T+2min"}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(script)
        await run_poller(imds, state, drains, 62)  # not 60: a tie with a poll is a race
    assert imds.polls == pytest.approx([5.0 * i for i in range(13)])
    assert [at for at, _ in drains.notices] == [15]
    notice = drains.notices[0][1]
    assert (notice.kind, notice.action, notice.time) == ("spot", "terminate", "T+2min")
    assert state.draining == notice
    assert state.draining_started.is_set()


async def test_later_notices_are_logged_but_do_not_drain_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    imds, drains = MockImds(), Drains()
    state = HostState(version="1", environment="prod")
    imds.answers[REBALANCE] = (200, json.dumps({"noticeTime": "R"}))

    async def script() -> None:
        await trio.sleep(7)
        imds.answers[SPOT] = (200, json.dumps({"action": "stop", "time": "S"}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(script)
        await run_poller(imds, state, drains, 32)
    assert [(at, n.kind) for at, n in drains.notices] == [(0, "rebalance")]
    assert state.draining is not None
    assert state.draining.kind == "rebalance"
    spot_warnings = [r for r in caplog.records if "EC2 spot notice" in r.getMessage()]
    assert len(spot_warnings) == 1
    assert "already draining" in spot_warnings[0].getMessage()


async def test_spot_wins_when_both_are_present(autojump_clock: trio.testing.MockClock) -> None:
    imds, drains = MockImds(), Drains()
    state = HostState(version="1", environment="prod")
    imds.answers[REBALANCE] = (200, json.dumps({"noticeTime": "R"}))
    imds.answers[SPOT] = (200, json.dumps({"action": "hibernate", "time": "S"}))
    await run_poller(imds, state, drains, 12)
    assert [n.kind for _, n in drains.notices] == ["spot"]


async def test_errors_are_survived_and_rate_limited(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    imds, drains = MockImds(), Drains()
    state = HostState(version="1", environment="prod")
    imds.answers[SPOT] = (500, "")

    async def script() -> None:
        await trio.sleep(62)  # 13 failing polls (0..60)
        imds.answers[SPOT] = (200, "{not json")
        await trio.sleep(5)  # 1 malformed notice at 65
        imds.answers[SPOT] = (200, json.dumps({"action": "terminate", "time": "T"}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(script)
        await run_poller(imds, state, drains, 100)
    assert [at for at, _ in drains.notices] == [70]
    failures = [
        r.getMessage()
        for r in caplog.records
        if "polling instance metadata failed" in r.getMessage()
    ]
    # The first at 0, a summary at 60 (11 suppressed in between), 65 suppressed.
    assert len(failures) == 2
    assert "11 more failures not logged" in failures[1]
    assert any("works again after 14 failures" in r.getMessage() for r in caplog.records)


async def test_a_failing_path_does_not_hide_the_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    imds, drains = MockImds(), Drains()
    state = HostState(version="1", environment="prod")
    imds.answers[REBALANCE] = (500, "")
    imds.answers[SPOT] = (200, json.dumps({"action": "terminate", "time": "T"}))
    await run_poller(imds, state, drains, 2)
    assert [(at, n.kind) for at, n in drains.notices] == [(0, "spot")]


def test_parsers() -> None:
    spot = parse_spot_notice('{"action": "terminate", "time": "2026-11-25T12:02:00Z"}', NOW)
    assert spot == DrainNotice("spot", "terminate", "2026-11-25T12:02:00Z", NOW)
    rebalance = parse_rebalance_notice('{"noticeTime": "2026-11-25T12:00:00Z"}', NOW)
    assert rebalance == DrainNotice("rebalance", None, "2026-11-25T12:00:00Z", NOW)
    for bad in ("", "[]", '{"action": "terminate"}', '{"action": 1, "time": "x"}'):
        with pytest.raises(MalformedNotice):
            parse_spot_notice(bad, NOW)
    with pytest.raises(MalformedNotice):
        parse_rebalance_notice("{}", NOW)


async def test_against_the_fake_imds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    state = HostState(version="1", environment="prod")
    drained = trio.Event()

    async def on_drain(notice: DrainNotice) -> None:
        drained.set()

    with trio.fail_after(10):
        async with (
            running_fake_imds() as imds,
            ImdsClient(imds.url) as client,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(
                functools.partial(run_spot_poller, client, state, interval=0.05, on_drain=on_drain)
            )
            imds.schedule_spot("terminate", time="2026-11-25T12:02:00Z", after=0.2)
            await drained.wait()
            nursery.cancel_scope.cancel()
    assert state.draining is not None
    assert (state.draining.action, state.draining.time) == ("terminate", "2026-11-25T12:02:00Z")
    assert imds.token_requests == 1
