"""Heartbeat numbering, schedule, payload and the dying heartbeat (contract §4).

Test rules: schedules in virtual time (autojump_clock) against httpx.MockTransport, exact
times from a seeded random source; one protocol test against the real fake webserver on
127.0.0.1:0 under an absolute fail_after.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import random
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from fractal_hostd.hoststate import DrainNotice, HostState
from fractal_hostd.webserver.client import WebserverClient
from fractal_hostd.webserver.heartbeat import Heartbeats, rfc3339_utc
from tests.fakes.webserver import running_fake_webserver
from tests.instance_fixtures import METADATA

TOKEN = "heartbeat-test-token"
MEMINFO = "MemTotal:       16000000 kB\nMemFree:         8000000 kB\nMemAvailable:   12000000 kB\n"


@pytest.fixture
def meminfo(tmp_path: Path) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO)
    return path


class Recorder:
    """A webserver on httpx.MockTransport: records (trio time, body); can fail or block."""

    def __init__(self) -> None:
        self.beats: list[tuple[float, dict[str, Any]]] = []
        self.status = 200
        self.gate: trio.Event | None = None
        self.transport = httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.beats.append((trio.current_time(), json.loads(request.content)))
        if self.gate is not None:
            await self.gate.wait()
        return httpx.Response(self.status, json={})

    @property
    def numbers(self) -> list[int]:
        return [body["HeartbeatNumber"] for _, body in self.beats]


def make(
    recorder: Recorder, meminfo: Path, state: HostState | None = None, **kwargs: Any
) -> Heartbeats:
    return Heartbeats(
        WebserverClient("http://ws", transport=recorder.transport),
        TOKEN,
        METADATA,
        state if state is not None else HostState(version="1", environment="dev"),
        num_containers=lambda: 3,
        rng=random.Random(42),
        meminfo_path=meminfo,
        **kwargs,
    )


async def test_schedule_and_numbering(
    autojump_clock: trio.testing.MockClock, meminfo: Path
) -> None:
    recorder = Recorder()
    heartbeats = make(recorder, meminfo)
    async with trio.open_nursery() as nursery:
        ok = await nursery.start(functools.partial(heartbeats.run, interval=60, jitter=5))
        assert ok is True
        assert recorder.numbers == [0]  # heartbeat 0 went out before started()
        await trio.sleep(400)
        nursery.cancel_scope.cancel()
    rng = random.Random(42)
    expected = [0.0]
    while (next_at := expected[-1] + 60 + rng.uniform(-5, 5)) < 400:
        expected.append(next_at)
    times = [at for at, _ in recorder.beats]
    assert times == pytest.approx(expected)
    assert recorder.numbers == list(range(len(times)))
    assert all(55 <= b - a <= 65 for a, b in itertools.pairwise(times))


async def test_payload_fields(autojump_clock: trio.testing.MockClock, meminfo: Path) -> None:
    recorder = Recorder()
    state = HostState(version="1", environment="dev")
    moment = dt.datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=dt.UTC)
    heartbeats = make(recorder, meminfo, state, now=lambda: moment)
    assert await heartbeats.send_now() is True
    state.start_draining(DrainNotice("spot", "terminate", "2026-11-25T12:02:00Z", moment))
    await heartbeats.send_dying("SIGTERM")
    first, dying = (body for _, body in recorder.beats)
    assert first == {
        "AuthToken": TOKEN,
        "Timestamp": "2026-11-25T12:00:00.123456Z",
        "HeartbeatNumber": 0,
        "InstanceID": "i-0abc",
        "InstanceType": "g4dn.xlarge",
        "TotalRAMinKB": 16000000,
        "FreeRAMinKB": 8000000,
        "AvailRAMinKB": 12000000,
        "IsDyingHeartbeat": False,
        "IsDraining": False,
        "NumContainers": 3,
    }
    assert dying["HeartbeatNumber"] == 1
    assert dying["IsDyingHeartbeat"] is True
    assert dying["IsDraining"] is True
    assert dying["ShutdownReason"] == "SIGTERM"
    assert state.last_heartbeat is not None
    assert (state.last_heartbeat.number, state.last_heartbeat.dying) == (1, True)
    assert state.last_heartbeat.sent_at == moment


def test_timestamp_format() -> None:
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rfc3339_utc(dt.datetime.now(dt.UTC))
    )
    plus_one = dt.timezone(dt.timedelta(hours=1))
    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=plus_one)
    assert rfc3339_utc(moment) == "2026-01-02T02:04:05.000006Z"


async def test_dying_takes_the_next_number_and_nothing_follows(
    autojump_clock: trio.testing.MockClock, meminfo: Path
) -> None:
    recorder = Recorder()
    heartbeats = make(recorder, meminfo)
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(heartbeats.run, interval=60, jitter=5))
        await trio.sleep(130)  # heartbeats 0, 1, 2
        await heartbeats.send_dying("crash")
        await trio.sleep(600)
        assert await heartbeats.send_now() is False
        await heartbeats.send_dying("again")
        nursery.cancel_scope.cancel()
    assert recorder.numbers == [0, 1, 2, 3]
    assert recorder.beats[-1][1]["IsDyingHeartbeat"] is True
    assert heartbeats.dead


async def test_dying_is_number_0_when_none_was_sent(meminfo: Path) -> None:
    recorder = Recorder()
    heartbeats = make(recorder, meminfo)
    await heartbeats.send_dying("handshake ok, start-up failed later")
    assert recorder.numbers == [0]


async def test_dying_is_number_0_when_heartbeat_0_was_cut_in_flight(
    autojump_clock: trio.testing.MockClock, meminfo: Path
) -> None:
    """A stop during heartbeat 0: start-up never completed, so the dying one is 0 (§4)."""
    recorder = Recorder()
    recorder.gate = trio.Event()  # heartbeat 0 never answers
    heartbeats = make(recorder, meminfo)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(heartbeats.run, interval=60, jitter=5))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()  # the shutdown cancels start-up
    recorder.gate.set()
    await heartbeats.send_dying("received SIGTERM")
    assert recorder.numbers == [0, 0]
    assert recorder.beats[-1][1]["IsDyingHeartbeat"] is True


async def test_no_heartbeat_after_dying_even_when_queued(
    autojump_clock: trio.testing.MockClock, meminfo: Path
) -> None:
    recorder = Recorder()
    recorder.gate = trio.Event()  # the first heartbeat hangs in flight
    heartbeats = make(recorder, meminfo)
    results: dict[str, bool | None] = {}

    async def call(name: str, send: Any) -> None:
        results[name] = await send()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "in-flight", heartbeats.send_now)
        await trio.sleep(1)
        nursery.start_soon(call, "dying", lambda: heartbeats.send_dying("SIGTERM"))
        await trio.sleep(1)
        nursery.start_soon(call, "queued", heartbeats.send_now)
        await trio.sleep(1)
        assert recorder.numbers == [0]  # the dying one waits for the one in flight
        recorder.gate.set()
    assert recorder.numbers == [0, 1]
    assert recorder.beats[1][1]["IsDyingHeartbeat"] is True
    assert results == {"in-flight": True, "dying": None, "queued": False}


async def test_failed_heartbeat_is_not_retried(
    autojump_clock: trio.testing.MockClock, meminfo: Path
) -> None:
    recorder = Recorder()
    recorder.status = 500
    results: list[bool] = []
    state = HostState(version="1", environment="dev")
    heartbeats = make(recorder, meminfo, state, on_result=results.append)
    async with trio.open_nursery() as nursery:
        ok = await nursery.start(functools.partial(heartbeats.run, interval=60, jitter=0))
        assert ok is False
        assert state.last_heartbeat is not None
        assert not state.last_heartbeat.ok
        recorder.status = 200
        await trio.sleep(90)
        nursery.cancel_scope.cancel()
    assert [at for at, _ in recorder.beats] == [0, 60]
    assert recorder.numbers == [0, 1]
    assert results == [False, True]
    assert state.last_heartbeat.ok


async def test_unreadable_meminfo_still_sends(tmp_path: Path) -> None:
    recorder = Recorder()
    heartbeats = make(recorder, tmp_path / "missing")
    assert await heartbeats.send_now() is True
    assert recorder.beats[0][1]["TotalRAMinKB"] == 0


async def test_bad_schedule_is_refused(meminfo: Path) -> None:
    heartbeats = make(Recorder(), meminfo)
    with pytest.raises(ValueError, match="jitter < interval"):
        await heartbeats.run(interval=5, jitter=5)


async def test_against_the_fake_webserver() -> None:
    state = HostState(version="1", environment="dev")
    with trio.fail_after(10):
        async with running_fake_webserver(token=TOKEN) as ws, WebserverClient(ws.url) as client:
            token = await client.handshake(METADATA)
            heartbeats = Heartbeats(client, token, METADATA, state, num_containers=lambda: 0)
            async with trio.open_nursery() as nursery:
                assert await nursery.start(functools.partial(heartbeats.run, interval=60, jitter=5))
                await heartbeats.send_dying("test over")
                nursery.cancel_scope.cancel()
    assert [beat["HeartbeatNumber"] for beat in ws.heartbeats] == [0, 1]
    assert ws.heartbeats[0]["AuthToken"] == TOKEN
    assert ws.heartbeats[0]["TotalRAMinKB"] > 0
    assert ws.heartbeats[1]["ShutdownReason"] == "test over"
