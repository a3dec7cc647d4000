"""IMDS client and start-up metadata read.

Test rules: localhost only, port 0 (tests/fakes/imds.py); protocol tests use the real fake
server under an absolute trio.fail_after; timing tests (retries, backoff, total bound) run in
virtual time with autojump_clock and httpx.MockTransport (real sockets and autojump clash).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import trio
import trio.testing

from fractal_hostd.metadata.imds import (
    LOCAL_METADATA,
    ImdsClient,
    ImdsError,
    MetadataUnavailable,
    fetch_metadata,
    local_metadata,
)
from tests.fakes.imds import DEFAULT_METADATA, running_fake_imds


@pytest.fixture
def realtime_mock_clock() -> trio.testing.MockClock:
    """Virtual time that runs at wall-clock rate: sockets work, and jump() ages tokens."""
    return trio.testing.MockClock(rate=1.0)


async def test_fetch_metadata_uses_a_v2_token() -> None:
    with trio.fail_after(10):
        async with running_fake_imds() as imds, ImdsClient(imds.url) as client:
            metadata = await fetch_metadata(client)
    assert metadata.instance_id == DEFAULT_METADATA["instance-id"]
    assert metadata.ami_id == DEFAULT_METADATA["ami-id"]
    assert metadata.ami_launch_index == "0"
    assert metadata.instance_type == "g4dn.xlarge"
    assert metadata.region == "us-east-1"
    assert metadata.availability_zone == "us-east-1a"
    assert metadata.public_ipv4 == "203.0.113.7"
    assert metadata.local_ipv4 == "10.1.2.3"
    assert imds.token_requests == 1
    assert imds.requests[0] == ("PUT", "/latest/api/token", 200)
    assert all(status == 200 for _, _, status in imds.requests)
    assert not client.uses_v1


async def test_public_ipv4_404_is_none() -> None:
    metadata = {k: v for k, v in DEFAULT_METADATA.items() if k != "public-ipv4"}
    with trio.fail_after(10):
        async with running_fake_imds(metadata=metadata) as imds, ImdsClient(imds.url) as client:
            result = await fetch_metadata(client)
            assert await client.get("public-ipv4") is None
    assert result.public_ipv4 is None


async def test_fake_refuses_requests_without_a_valid_token() -> None:
    with trio.fail_after(10):
        async with running_fake_imds() as imds, httpx.AsyncClient(base_url=imds.url) as http:
            plain = await http.get("/latest/meta-data/instance-id")
            bogus = await http.get(
                "/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": "nope"}
            )
            no_ttl = await http.put("/latest/api/token")
            long_ttl = await http.put(
                "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "21601"}
            )
    assert (plain.status_code, bogus.status_code) == (401, 401)
    assert (no_ttl.status_code, long_ttl.status_code) == (400, 400)


async def test_401_fetches_a_new_token_and_repeats_once() -> None:
    with trio.fail_after(10):
        async with running_fake_imds() as imds, ImdsClient(imds.url) as client:
            assert await client.get("instance-id") == DEFAULT_METADATA["instance-id"]
            imds.revoke_tokens()
            assert await client.get("instance-id") == DEFAULT_METADATA["instance-id"]
    assert imds.token_requests == 2
    statuses = [status for _, _, status in imds.requests]
    assert statuses == [200, 200, 401, 200, 200]


async def test_token_is_renewed_before_it_expires(
    realtime_mock_clock: trio.testing.MockClock,
) -> None:
    # Jumps stay small: something in hypercorn/quart drops a kept-alive connection whose
    # clock jumped by a minute, which has nothing to do with what is tested here.
    with trio.fail_after(10 + 37):  # the test jumps the clock by 37 s in total
        async with running_fake_imds() as imds:
            async with ImdsClient(imds.url, token_ttl=40, refresh_margin=10) as client:
                await client.get("instance-id")
                realtime_mock_clock.jump(25)
                await client.get("instance-id")
                assert imds.token_requests == 1
                realtime_mock_clock.jump(6)  # 31 s: inside the 10 s margin before expiry
                await client.get("instance-id")
                assert imds.token_requests == 2
            # The fake really expires tokens in trio time (what the renewal avoids).
            async with httpx.AsyncClient(base_url=imds.url) as http:
                put = await http.put(
                    "/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "5"}
                )
                headers = {"X-aws-ec2-metadata-token": put.text}
                fresh = await http.get("/latest/meta-data/instance-id", headers=headers)
                realtime_mock_clock.jump(6)
                stale = await http.get("/latest/meta-data/instance-id", headers=headers)
    assert (fresh.status_code, stale.status_code) == (200, 401)
    assert [status for _, _, status in imds.requests[:5]] == [200, 200, 200, 200, 200]


@pytest.mark.parametrize("put_status", [403, 404, 405])
async def test_v1_fallback_when_the_token_put_is_not_answered_as_v2(put_status: int) -> None:
    with trio.fail_after(10):
        async with running_fake_imds(mode="v1-only") as imds, ImdsClient(imds.url) as client:
            imds.v1_put_status = put_status
            metadata = await fetch_metadata(client)
    assert metadata.instance_id == DEFAULT_METADATA["instance-id"]
    assert client.uses_v1
    assert imds.token_requests == 1  # the fallback is remembered


async def test_v1_client_returns_to_v2_when_imds_starts_requiring_it() -> None:
    with trio.fail_after(10):
        async with running_fake_imds(mode="v1-only") as imds, ImdsClient(imds.url) as client:
            await client.get("instance-id")
            assert client.uses_v1
            imds.mode = "v2-required"
            assert await client.get("instance-id") == DEFAULT_METADATA["instance-id"]
            assert not client.uses_v1


async def test_token_put_500_is_an_error_not_a_v1_fallback() -> None:
    with trio.fail_after(10):
        async with running_fake_imds() as imds, ImdsClient(imds.url) as client:
            imds.fail_next = 1
            with pytest.raises(ImdsError, match="500 for the token request"):
                await client.get("instance-id")
            assert not client.uses_v1
            assert await client.get("instance-id") == DEFAULT_METADATA["instance-id"]


async def test_stalled_imds_times_out() -> None:
    with trio.fail_after(10):
        async with running_fake_imds() as imds, ImdsClient(imds.url, timeout=0.2) as client:
            imds.stalled = True
            with pytest.raises(ImdsError, match="timed out"):
                await client.get("instance-id")


async def test_connection_refused_is_an_imds_error() -> None:
    with trio.fail_after(10):
        async with running_fake_imds() as imds:
            url = imds.url
        async with ImdsClient(url) as client:
            with pytest.raises(ImdsError, match="unreachable"):
                await client.get("instance-id")


# --- virtual time: retries and bounds -------------------------------------------------------


def _mock_imds(
    *, fail_first: int = 0, missing: frozenset[str] = frozenset()
) -> tuple[httpx.MockTransport, list[tuple[float, str]]]:
    """Answers like a v2 IMDS; the first `fail_first` requests get 500. Logs (time, path)."""
    log: list[tuple[float, str]] = []
    failures: Iterator[bool] = iter([True] * fail_first)

    def handler(req: httpx.Request) -> httpx.Response:
        log.append((trio.current_time(), req.url.path))
        if next(failures, False):
            return httpx.Response(500)
        if req.method == "PUT":
            return httpx.Response(200, text="token")
        path = req.url.path.removeprefix("/latest/meta-data/")
        if path in missing or path not in DEFAULT_METADATA:
            return httpx.Response(404)
        return httpx.Response(200, text=DEFAULT_METADATA[path])

    return httpx.MockTransport(handler), log


async def test_retries_keep_what_was_read(autojump_clock: trio.testing.MockClock) -> None:
    transport, log = _mock_imds(fail_first=3)  # token PUT, then ami-id fails twice
    async with ImdsClient("http://imds", transport=transport) as client:
        metadata = await fetch_metadata(client, attempts=4, backoff=0.5)
    assert metadata.instance_id == DEFAULT_METADATA["instance-id"]
    assert trio.current_time() == pytest.approx(0.5 + 1.0 + 2.0)
    paths = [path for _, path in log]
    assert paths.count("/latest/meta-data/instance-id") == 1


async def test_bounded_retries_then_metadata_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport, _ = _mock_imds(missing=frozenset({"instance-id"}))
    async with ImdsClient("http://imds", transport=transport) as client:
        with pytest.raises(MetadataUnavailable) as caught:
            await fetch_metadata(client, attempts=3, backoff=0.5)
    assert trio.current_time() == pytest.approx(0.5 + 1.0)
    message = str(caught.value)
    assert "missing instance-id, instance-type" in message
    assert "after 3 attempt(s)" in message
    assert "no instance-id (404)" in message


async def test_a_stalling_imds_is_bounded_by_the_total_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def stall(req: httpx.Request) -> httpx.Response:
        await trio.sleep(1)  # what the 1 s read timeout does against a real socket
        raise httpx.ReadTimeout("stalled", request=req)

    async with ImdsClient("http://imds", transport=httpx.MockTransport(stall)) as client:
        with pytest.raises(MetadataUnavailable, match="gave up after 10 s") as caught:
            await fetch_metadata(client, attempts=100, total_timeout=10)
    assert trio.current_time() == pytest.approx(10)
    assert "missing ami-id" in str(caught.value)


def test_local_metadata_is_static_and_named_after_the_host() -> None:
    assert LOCAL_METADATA.instance_id.startswith("localdev-")
    assert local_metadata("box").instance_id == "localdev-box"
    assert local_metadata("box").public_ipv4 is None


def test_token_ttl_is_validated() -> None:
    with pytest.raises(ValueError, match="token_ttl"):
        ImdsClient("http://imds", token_ttl=0)


async def test_an_unreachable_imds_is_named_in_logs_not_redacted_away() -> None:
    from fractal_hostd.process.logs import redact_text

    async with ImdsClient("http://127.0.0.1:9") as client:
        with trio.fail_after(10), pytest.raises(MetadataUnavailable) as info:
            await fetch_metadata(client, attempts=1)
    assert "ConnectError" in redact_text(str(info.value))
