"""The event stream against the machine's real Docker engine (marked `docker`).

Containers are named `fhtest-*` and removed (forced) at the end of each test. Other tests
may run managed containers on the same engine at the same time: assertions only look at
this test's own containers. The stream is cut off from dockerd with a unix-socket proxy,
since the real dockerd must not be stopped.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import trio

from fractal_hostd.containers.lifecycle import ContainerLifecycle
from fractal_hostd.containers.registry import ContainerRegistry
from fractal_hostd.docker.client import DockerClient, DockerNotFound
from fractal_hostd.hoststate import DockerStatus
from tests.docker_fixtures import event_stream_running, real_client
from tests.fakes.unix_proxy import UnixProxy, running_unix_proxy

__all__ = ["real_client"]  # a fixture, used by name

pytestmark = pytest.mark.docker

IMAGE = "fractal-hostd-test-busybox:latest"
PORT = "32262/tcp"


def managed_body() -> dict[str, Any]:
    return {
        "Image": IMAGE,
        "Cmd": ["sleep", "300"],
        "ExposedPorts": {PORT: {}},
        "HostConfig": {"PortBindings": {PORT: [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
    }


class Containers:
    """Creates `fhtest-*` containers on the real engine and force-removes them at the end."""

    def __init__(self, client: DockerClient) -> None:
        self.client = client
        self.ids: list[str] = []

    async def run(self) -> str:
        name = f"fhtest-events-{secrets.token_hex(4)}"
        container_id = await self.client.create_container(name, managed_body())
        self.ids.append(container_id)
        await self.client.start_container(container_id)
        return container_id

    async def remove_all(self) -> None:
        with trio.move_on_after(30, shield=True):
            for container_id in self.ids:
                with suppress(DockerNotFound):
                    await self.client.remove_container(container_id, force=True)


@pytest.fixture
async def containers(real_client: DockerClient) -> AsyncIterator[Containers]:
    made = Containers(real_client)
    try:
        yield made
    finally:
        await made.remove_all()


@pytest.fixture
async def proxy(docker_socket: Path) -> AsyncIterator[UnixProxy]:
    with tempfile.TemporaryDirectory(prefix="fhd-proxy-", dir="/tmp") as directory:
        async with running_unix_proxy(Path(directory) / "docker.sock", docker_socket) as proxied:
            yield proxied


def read(mappings: Path, container_id: str, name: str) -> str | None:
    path = mappings / container_id / name
    return path.read_text() if path.exists() else None


async def wait_for(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.01)


@asynccontextmanager
async def stream_task(
    client: DockerClient, mappings: Path, status: DockerStatus
) -> AsyncIterator[ContainerRegistry]:
    registry = ContainerRegistry()
    lifecycle = ContainerLifecycle(mappings_dir=mappings, registry=registry)
    async with event_stream_running(client, lifecycle, status, unreachable_budget=60.0):
        yield registry


async def test_running_containers_get_files_and_ttys_and_die_cleans_them(
    real_client: DockerClient, containers: Containers, tmp_path: Path
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    with trio.fail_after(60):
        early = await containers.run()  # running before the stream starts: adopted
        async with stream_task(real_client, mappings, DockerStatus()):
            assert read(mappings, early, "tty") is not None
            late = await containers.run()  # seen through its start event
            await wait_for(lambda: read(mappings, late, "tty") is not None)
            inspect = await real_client.inspect_container(late)
            host_port = inspect["NetworkSettings"]["Ports"][PORT][0]["HostPort"]
            assert read(mappings, late, "hostPort_for_my_32262_tcp") == host_port
            ttys = {read(mappings, early, "tty"), read(mappings, late, "tty")}
            assert len(ttys) == 2
            assert all(10 <= int(t or 0) <= 63 for t in ttys)
            await real_client.kill_container(late)
            await wait_for(lambda: not (mappings / late).exists())
            await real_client.remove_container(early, force=True)
            await wait_for(lambda: not (mappings / early).exists())


async def test_container_started_while_the_stream_is_down_is_handled_after_reconnect(
    real_client: DockerClient, containers: Containers, proxy: UnixProxy, tmp_path: Path
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    status = DockerStatus()
    with trio.fail_after(60):
        async with (
            DockerClient(proxy.listen_path) as proxied,
            stream_task(proxied, mappings, status),
        ):
            await proxy.stop_listening()
            await wait_for(lambda: not status.connected)
            during = await containers.run()  # through the real socket, unseen by the stream
            await proxy.start_listening()
            await wait_for(lambda: read(mappings, during, "tty") is not None)
            # The reconnect's reconcile writes the files just before the stream calls itself
            # connected again.
            await wait_for(lambda: status.connected)
            assert status.reconnects == 1


async def test_a_restarted_stream_task_keeps_the_ttys(
    real_client: DockerClient, containers: Containers, tmp_path: Path
) -> None:
    mappings = tmp_path / "containerResourceMappings"
    with trio.fail_after(60):
        async with stream_task(real_client, mappings, DockerStatus()):
            first = await containers.run()
            second = await containers.run()
            await wait_for(lambda: read(mappings, second, "tty") is not None)
            await wait_for(lambda: read(mappings, first, "tty") is not None)
            await real_client.kill_container(first)  # frees a TTY below second's, maybe
            await wait_for(lambda: not (mappings / first).exists())
            before = read(mappings, second, "tty")
        third = await containers.run()  # starts while no stream runs at all
        async with stream_task(real_client, mappings, DockerStatus()) as registry:
            assert read(mappings, second, "tty") == before
            record = registry.get(second)
            assert record is not None
            assert str(record.tty) == before
            assert read(mappings, third, "tty") is not None


async def test_a_paused_container_keeps_its_tty_and_files_across_a_reconcile_and_a_restart(
    real_client: DockerClient, containers: Containers, proxy: UnixProxy, tmp_path: Path
) -> None:
    # Contract §2: `docker pause` leaves the container live. It must keep its TTY and files
    # through the reconcile of a reconnect and through the adoption of a restart, and get no
    # second TTY after `docker unpause`.
    mappings = tmp_path / "containerResourceMappings"
    status = DockerStatus()
    with trio.fail_after(90):
        paused = await containers.run()
        async with (
            DockerClient(proxy.listen_path) as proxied,
            stream_task(proxied, mappings, status) as registry,
        ):
            record = registry.get(paused)
            assert record is not None
            assert record.tty is not None
            lifecycle_tty = record.tty
            await real_client.pause_container(paused)
            await proxy.stop_listening()  # cut the stream: the reconnect reconciles
            await wait_for(lambda: not status.connected)
            await proxy.start_listening()
            await wait_for(lambda: status.reconnects == 1)
            assert registry.get(paused) is record
            assert read(mappings, paused, "tty") == str(lifecycle_tty)
            newcomer = await containers.run()
            await wait_for(lambda: read(mappings, newcomer, "tty") is not None)
            assert read(mappings, newcomer, "tty") != str(lifecycle_tty)
        before = {p.name: p.read_text() for p in (mappings / paused).iterdir()}
        async with stream_task(real_client, mappings, DockerStatus()) as registry:
            adopted = registry.get(paused)
            assert adopted is not None
            assert adopted.tty == lifecycle_tty
            assert {p.name: p.read_text() for p in (mappings / paused).iterdir()} == before
            await real_client.unpause_container(paused)
            late = await containers.run()
            await wait_for(lambda: read(mappings, late, "tty") is not None)
            assert read(mappings, late, "tty") != str(lifecycle_tty)
            assert registry.get(paused) is adopted
            assert adopted.tty == lifecycle_tty
            assert read(mappings, paused, "tty") == str(lifecycle_tty)
