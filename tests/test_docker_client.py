"""DockerClient against the fake engine (real HTTP over a unix socket) and the stream decoder.

Rules: unix sockets under /tmp only, an absolute `trio.fail_after` around every I/O test.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from fractal_hostd.docker.client import (
    DockerClient,
    DockerError,
    DockerNotFound,
    DockerTimeout,
    DockerUnreachable,
)
from fractal_hostd.docker.jsonstream import MAX_PENDING, JsonStreamDecoder
from tests.docker_fixtures import fake_client, fake_docker
from tests.fakes.docker_engine import FakeDockerEngine
from tests.fakes.docker_model import MANAGED_PORT

__all__ = ["fake_client", "fake_docker"]

MANAGED_BODY: dict[str, Any] = {
    "Image": "fractal-hostd-test-busybox:latest",
    "Cmd": ["sleep", "300"],
    "ExposedPorts": {MANAGED_PORT: {}},
    "HostConfig": {"PortBindings": {MANAGED_PORT: [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
}


async def test_ping_version_and_container_calls(
    fake_docker: FakeDockerEngine, fake_client: DockerClient
) -> None:
    with trio.fail_after(5):
        await fake_client.ping()
        assert (await fake_client.version())["ApiVersion"] == "1.41"
        container_id = await fake_client.create_container("fhtest-one", MANAGED_BODY)
        assert len(container_id) == 64
        assert await fake_client.list_containers() == []
        assert len(await fake_client.list_containers(all=True)) == 1
        await fake_client.start_container(container_id)
        await fake_client.start_container(container_id)  # 304: already started is fine
        listed = await fake_client.list_containers(filters={"status": ["running"]})
        assert [c["Id"] for c in listed] == [container_id]
        inspect = await fake_client.inspect_container(container_id)
        assert inspect["State"]["Running"] is True
        assert inspect["NetworkSettings"]["Ports"][MANAGED_PORT][0]["HostPort"].isdigit()
        assert (await fake_client.inspect_image("fractal-hostd-test-busybox:latest"))["Id"]
        await fake_client.kill_container(container_id)
        assert (await fake_client.inspect_container(container_id))["State"]["Running"] is False
        await fake_client.remove_container(container_id, force=True)
    assert fake_docker.requests[:2] == ["GET /_ping", "GET /version"]


async def test_image_names_with_slashes_reach_the_engine(fake_client: DockerClient) -> None:
    with trio.fail_after(5):
        image = await fake_client.inspect_image("amazon/amazon-ecs-agent:latest")
    assert image["RepoTags"] == ["amazon/amazon-ecs-agent:latest"]


async def test_http_errors_carry_dockers_message(
    fake_docker: FakeDockerEngine, fake_client: DockerClient
) -> None:
    with trio.fail_after(5):
        with pytest.raises(DockerNotFound) as not_found:
            await fake_client.inspect_container("0" * 64)
        assert not_found.value.status == 404
        assert not_found.value.message == f"No such container: {'0' * 64}"
        with pytest.raises(DockerNotFound, match="No such image: nope:1"):
            await fake_client.inspect_image("nope:1")
        await fake_client.create_container("fhtest-dup", MANAGED_BODY)
        with pytest.raises(DockerError) as conflict:
            await fake_client.create_container("fhtest-dup", MANAGED_BODY)
        assert conflict.value.status == 409
        assert not isinstance(conflict.value, DockerNotFound)
        fake_docker.fail(r"GET /containers/json", 500, message="boom", times=1)
        with pytest.raises(DockerError) as server_error:
            await fake_client.list_containers()
        assert (server_error.value.status, server_error.value.message) == (500, "boom")
        assert await fake_client.list_containers() == []  # only once


async def test_error_body_that_is_not_json_is_kept_as_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway from a proxy\n")

    client = DockerClient("/unused", transport=httpx.MockTransport(handler))
    with pytest.raises(DockerError) as error:
        await client.version()
    assert (error.value.status, error.value.message) == (502, "bad gateway from a proxy")
    await client.aclose()


async def test_missing_socket_and_refused_connection_are_unreachable(
    fake_docker: FakeDockerEngine, fake_client: DockerClient
) -> None:
    with trio.fail_after(5):
        with tempfile.TemporaryDirectory(dir="/tmp") as directory:
            async with DockerClient(str(Path(directory) / "none.sock")) as missing:
                with pytest.raises(DockerUnreachable):
                    await missing.ping()
        await fake_docker.stop_listening()
        with pytest.raises(DockerUnreachable, match="refused"):
            await fake_client.ping()
        with pytest.raises(DockerUnreachable):
            async with fake_client.events():
                pass
        await fake_docker.start_listening()
        await fake_client.ping()


async def test_a_request_without_an_answer_in_time_is_a_timeout(
    fake_docker: FakeDockerEngine, autojump_clock: trio.testing.MockClock
) -> None:
    fake_docker.hold(r"^GET /_ping$")
    async with DockerClient(fake_docker.socket_path, timeout=3.0) as client:
        with trio.fail_after(10), pytest.raises(DockerTimeout):
            await client.ping()
        fake_docker.cut(r"^GET /_ping$", times=1)
        with trio.fail_after(10), pytest.raises(DockerUnreachable) as dropped:
            await client.ping()
        assert not isinstance(dropped.value, DockerTimeout)


async def test_events_filters_are_a_json_map_of_lists_and_since_replays(
    fake_docker: FakeDockerEngine, fake_client: DockerClient
) -> None:
    container_id = fake_docker.run("fhtest-ev")
    fake_docker.kill(container_id)
    received: list[dict[str, Any]] = []
    with trio.fail_after(5):
        async with fake_client.events(
            filters={"type": ["container"], "event": ["start", "die"]}, since="0"
        ) as stream:
            async for event in stream:
                received.append(event)
                if len(received) == 2:
                    break
    assert [e["Action"] for e in received] == ["start", "die"]
    assert {e["id"] for e in received} == {container_id}


async def test_events_with_until_in_the_past_end_cleanly(
    fake_docker: FakeDockerEngine, fake_client: DockerClient
) -> None:
    fake_docker.run("fhtest-until")
    with trio.fail_after(5):
        async with fake_client.events(since="0", until="1") as stream:
            assert [e async for e in stream] == []
        async with fake_client.events(since="0", until="9999999999.000000000") as stream:
            first = await stream.__anext__()
    assert first["Action"] == "create"


async def test_events_decoded_across_arbitrary_chunk_boundaries(
    fake_docker: FakeDockerEngine, fake_client: DockerClient
) -> None:
    fake_docker.event_chunk_size = 7  # every event arrives in many small HTTP chunks
    received: list[dict[str, Any]] = []
    with trio.fail_after(10):
        async with fake_client.events(filters={"type": ["container"]}) as stream:
            fake_docker.emit("start", "a" * 64, name="fhtest-\u00e9\u4e2d")  # multi-byte
            fake_docker.emit("die", "b" * 64)
            async for event in stream:
                received.append(event)
                if len(received) == 2:
                    break
    assert [(e["Action"], e["id"][0]) for e in received] == [("start", "a"), ("die", "b")]
    assert received[0]["Actor"]["Attributes"]["name"] == "fhtest-\u00e9\u4e2d"


async def test_a_dropped_stream_raises_unreachable(
    fake_docker: FakeDockerEngine, fake_client: DockerClient
) -> None:
    with trio.fail_after(5):
        async with fake_client.events() as stream:
            fake_docker.emit("start", "c" * 64)
            assert (await stream.__anext__())["Action"] == "start"
            fake_docker.drop_streams()
            with pytest.raises(DockerUnreachable, match="dropped"):
                await stream.__anext__()


async def test_events_error_status_is_a_docker_error(
    fake_docker: FakeDockerEngine, fake_client: DockerClient
) -> None:
    fake_docker.fail(r"GET /events", 500, message="events broken")
    with trio.fail_after(5), pytest.raises(DockerError, match="events broken"):
        async with fake_client.events():
            pass


EVENTS = [
    {"Action": "start", "id": "a" * 64, "timeNano": 1, "Actor": {"Attributes": {"n": "\u00e9"}}},
    {"Action": "exec_start: sh -c 'echo {}'", "id": "b" * 64, "timeNano": 2},
    {"Action": "die", "id": "c" * 64, "timeNano": 3},
]
STREAM = b"".join(json.dumps(e, ensure_ascii=False).encode() + b"\n" for e in EVENTS)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_decoder_finds_every_object_whatever_the_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    decoder = JsonStreamDecoder()
    decoded = []
    for start, end in itertools.pairwise(bounds):
        decoded.extend(decoder.feed(STREAM[start:end]))
    assert decoded == EVENTS
    assert decoder.pending == ""
    assert decoder.skipped == 0


def test_decoder_skips_a_corrupt_line_and_accepts_objects_without_newlines() -> None:
    decoder = JsonStreamDecoder()
    assert decoder.feed(b'{"a": 1}{"b": 2}\nnot json\n[1]\n{"c"') == [{"a": 1}, {"b": 2}]
    assert decoder.skipped == 2
    assert decoder.feed(b": 3}\n") == [{"c": 3}]


def test_decoder_drops_an_endless_unfinished_tail() -> None:
    decoder = JsonStreamDecoder()
    assert decoder.feed(b'{"a": "' + b"x" * (MAX_PENDING + 1)) == []
    assert decoder.pending == ""
    assert decoder.skipped == 1
    assert decoder.feed(b'\n{"b": 1}\n') == [{"b": 1}]
