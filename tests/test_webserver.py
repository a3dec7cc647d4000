"""Webserver client: handshake retries and deadline, heartbeat sending, secrecy of the token.

Test rules: localhost only, port 0 (tests/fakes/webserver.py) under an absolute fail_after for
protocol tests; backoff and the 60 s deadline in virtual time (autojump_clock) with
httpx.MockTransport, since real sockets and autojump clash.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from fractal_hostd.webserver.client import HandshakeFailed, HeartbeatPayload, WebserverClient
from tests.fakes.webserver import running_fake_webserver
from tests.instance_fixtures import METADATA

SECRET = "s3cret-auth-token-value"


def payload(number: int = 0, token: str = SECRET) -> HeartbeatPayload:
    return {
        "AuthToken": token,
        "Timestamp": "2026-11-25T12:00:00.000000Z",
        "HeartbeatNumber": number,
        "InstanceID": "i-0abc",
        "InstanceType": "g4dn.xlarge",
        "TotalRAMinKB": 1000,
        "FreeRAMinKB": 500,
        "AvailRAMinKB": 700,
        "IsDyingHeartbeat": False,
        "IsDraining": False,
        "NumContainers": 0,
    }


async def test_handshake_posts_identity_and_returns_token() -> None:
    with trio.fail_after(10):
        async with running_fake_webserver(token=SECRET) as ws, WebserverClient(ws.url) as client:
            token = await client.handshake(METADATA)
    assert token == SECRET
    assert ws.handshakes == [
        {
            "InstanceID": "i-0abc",
            "InstanceType": "g4dn.xlarge",
            "Region": "us-east-1",
            "AWSAmiID": "ami-0123",
        }
    ]


async def test_handshake_retries_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(10):
        async with running_fake_webserver(token=SECRET) as ws, WebserverClient(ws.url) as client:
            ws.handshake_failures = 2
            token = await client.handshake(METADATA, initial_backoff=0.01)
    assert token == SECRET
    assert len(ws.handshakes) == 3
    assert "status 503" in caplog.text
    assert SECRET not in caplog.text


async def test_handshake_that_never_answers_fails_at_the_deadline() -> None:
    with trio.fail_after(10):
        async with running_fake_webserver() as ws:
            ws.handshake_blackhole = True
            async with WebserverClient(ws.url, timeout=0.2) as client:
                with pytest.raises(HandshakeFailed, match=r"within 0\.5 s") as caught:
                    await client.handshake(METADATA, deadline_s=0.5, initial_backoff=0.01)
    assert "timeout" in str(caught.value)
    assert len(ws.handshakes) >= 2


def _scripted(
    answers: list[Callable[[httpx.Request], httpx.Response]],
) -> tuple[httpx.MockTransport, list[float]]:
    """Answers handshakes from `answers` in turn (the last one repeats); logs request times."""
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(trio.current_time())
        return answers[min(len(times), len(answers)) - 1](request)

    return httpx.MockTransport(handler), times


def _status(code: int) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(code, json={"error": "no"})


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("refused", request=request)


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"AuthToken": SECRET})


async def test_every_other_answer_is_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [
        _status(500),
        _status(401),
        _refused,
        lambda _: httpx.Response(200, text="not json"),
        lambda _: httpx.Response(200, json={"Token": SECRET}),
        lambda _: httpx.Response(200, json={"AuthToken": ""}),
        lambda _: httpx.Response(200, json=[SECRET]),
        _ok,
    ]
    transport, times = _scripted(answers)
    async with WebserverClient("http://ws", transport=transport) as client:
        assert await client.handshake(METADATA) == SECRET
    assert len(times) == len(answers)
    assert SECRET not in caplog.text
    for reason in ("status 500", "status 401", "connection error", "not JSON", "no AuthToken"):
        assert reason in caplog.text


async def test_backoff_is_capped_jittered_and_deadline_is_fatal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport, times = _scripted([_status(503)])
    client = WebserverClient("http://ws", transport=transport, rng=random.Random(7))
    async with client:
        with pytest.raises(HandshakeFailed, match="within 60 s") as caught:
            await client.handshake(METADATA, initial_backoff=0.5, max_backoff=8.0)
    assert trio.current_time() == pytest.approx(60)
    # The same seeded draws give the exact schedule.
    rng = random.Random(7)
    expected = [0.0]
    while True:
        base = min(8.0, 0.5 * 2 ** (len(expected) - 1))
        at = expected[-1] + base * rng.uniform(0.5, 1.0)
        if at >= 60:
            break
        expected.append(at)
    assert times == pytest.approx(expected)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 8.0
    assert gaps[0] < gaps[3]
    assert f"{len(times)} attempt(s)" in str(caught.value)
    assert "status 503" in str(caught.value)


async def test_heartbeat_ok_and_failure_without_retry(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(10):
        async with running_fake_webserver(token=SECRET) as ws, WebserverClient(ws.url) as client:
            assert await client.send_heartbeat(payload(0)) is True
            ws.heartbeat_status = 500
            assert await client.send_heartbeat(payload(1)) is False
            assert await client.send_heartbeat(payload(2, token="wrong")) is False
    assert [beat["HeartbeatNumber"] for beat in ws.heartbeats] == [0, 1, 2]
    assert ws.heartbeats[0] == json.loads(json.dumps(payload(0)))
    assert "heartbeat 1 failed: status 500" in caplog.text
    assert SECRET not in caplog.text


async def test_heartbeat_timeout_and_refusal_are_failures() -> None:
    with trio.fail_after(10):
        async with running_fake_webserver(token=SECRET) as ws:
            ws.heartbeat_blackhole = True
            async with WebserverClient(ws.url, timeout=0.2) as client:
                assert await client.send_heartbeat(payload()) is False
            url = ws.url
            assert len(ws.heartbeats) == 1  # not retried
        async with WebserverClient(url, timeout=0.2) as client:
            assert await client.send_heartbeat(payload()) is False


async def test_base_url_with_a_path_prefix() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return _ok(request)

    client = WebserverClient("https://ws.example/api/", transport=httpx.MockTransport(handler))
    async with client:
        await client.handshake(METADATA)
        await client.send_heartbeat(payload())
    assert seen == [
        "https://ws.example/api/host_service/auth",
        "https://ws.example/api/host_service/heartbeat",
    ]
