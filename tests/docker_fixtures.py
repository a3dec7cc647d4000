"""Fixtures for the Docker tests: a fake engine on a short unix socket path, a client to it."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from fractal_hostd.docker.client import DockerClient, DockerNotFound
from fractal_hostd.docker.events import Lifecycle, run_event_stream
from fractal_hostd.docker.fanout import EventFanout
from fractal_hostd.hoststate import DockerStatus
from tests.conftest import TEST_IMAGE
from tests.fakes.docker_engine import FakeDockerEngine, running_fake_docker


@pytest.fixture
async def fake_docker() -> AsyncIterator[FakeDockerEngine]:
    # Not tmp_path: a unix socket path must stay under ~108 bytes.
    with tempfile.TemporaryDirectory(prefix="fhd-docker-", dir="/tmp") as directory:
        async with running_fake_docker(Path(directory) / "docker.sock") as engine:
            yield engine


@pytest.fixture
async def fake_client(fake_docker: FakeDockerEngine) -> AsyncIterator[DockerClient]:
    async with DockerClient(fake_docker.socket_path) as client:
        yield client


@pytest.fixture
async def real_client(docker_socket: Path) -> AsyncIterator[DockerClient]:
    """A client of the real engine (conftest's `docker_socket` skips when none answers); skips
    the test when the test image is missing."""
    async with DockerClient(str(docker_socket)) as client:
        with trio.fail_after(10):
            try:
                await client.inspect_image(TEST_IMAGE)
            except DockerNotFound:
                pytest.skip(f"test image {TEST_IMAGE} missing: run scripts/build-test-image.sh")
        yield client


@asynccontextmanager
async def event_stream_running(
    client: DockerClient,
    lifecycle: Lifecycle,
    status: DockerStatus,
    *,
    unreachable_budget: float = 120.0,
    reconcile_interval: float = 300.0,
    reconcile_jitter: float = 30.0,
    fanout: EventFanout | None = None,
) -> AsyncIterator[trio.Nursery]:
    """`run_event_stream` for the block, entered once it has started (subscribed and
    adopted); cancelled at the end of the block."""
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                run_event_stream,
                client,
                lifecycle,
                status=status,
                unreachable_budget=unreachable_budget,
                reconcile_interval=reconcile_interval,
                reconcile_jitter=reconcile_jitter,
                fanout=fanout,
            )
        )
        yield nursery
        nursery.cancel_scope.cancel()


class EmptyStream(httpx.AsyncByteStream):
    """A response body that ends at once: an `/events` stream dockerd closes immediately."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await trio.lowlevel.checkpoint()
        return
        yield b""  # makes this an async generator that yields nothing
