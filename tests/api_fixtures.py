"""Shared pieces of the API tests (and bench/bench_api.py): a real app over the real
container registry and lifecycle writing into a temporary mappings directory, plus a fake
cloud storage (the real one needs rclone/FUSE; it has its own tests)."""

from __future__ import annotations

import functools
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from fractal_hostd.api.app import HostApi, create_app
from fractal_hostd.api.server import serve_api
from fractal_hostd.api.slots import DEFAULT_REQUEST_SLOTS
from fractal_hostd.api.tls import TlsFiles, generate_certificate
from fractal_hostd.cloud_storage.mounts import MountFailed, MountRequest
from fractal_hostd.containers.info import ContainerInfo
from fractal_hostd.containers.lifecycle import BlockingRunner, ContainerLifecycle, run_inline
from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry
from fractal_hostd.hoststate import HostState
from fractal_hostd.metrics import Metrics

SECRET = "test-secret-0123456789-abcdef"
AUTH = {"Authorization": f"Bearer {SECRET}"}
# A managed container's host port, and a valid cloud-storage mount request for it.
PORT = 40000
MOUNT_BODY = {
    "host_port": PORT,
    "provider": "dropbox",
    "access_token": "at",
    "refresh_token": "rt",
    "expiry": "2030-01-01T00:00:00Z",
    "token_type": "bearer",
}


def container_id(host_port: int) -> str:
    return hashlib.sha256(str(host_port).encode()).hexdigest()


@dataclass
class FakeCloudStorage:
    """Keeps what is mounted the way the real one does: one mount per (host port, provider),
    owned by the container it was made for; a later container's mount on a reused port
    replaces it. `fail_with` makes the next mounts raise it."""

    root: Path
    mounts: list[dict[str, Any]] = field(default_factory=list)  # every successful request
    mounted: dict[tuple[int, str], str] = field(default_factory=dict)  # -> container id
    fail_with: Exception | None = None
    unmounted: list[tuple[int, str | None]] = field(default_factory=list)  # (port, container)
    # Runs while the request waits for its turn (the real one's lock): before `is_current`.
    before_turn: Callable[[], Awaitable[None]] | None = None
    # Runs while "rclone" mounts: lets a test kill the container mid-mount.
    during_mount: Callable[[], Awaitable[None]] | None = None

    async def mount(
        self,
        request: MountRequest,
        *,
        container_id: str,
        is_current: Callable[[], bool] | None = None,
    ) -> Path:
        host_port, provider = request.host_port, request.provider
        if self.before_turn is not None:
            await self.before_turn()
        if is_current is not None and not is_current():  # the real one asks before rclone runs
            raise MountFailed(f"no container with host port {host_port}")
        if self.during_mount is not None:
            await self.during_mount()
        if self.fail_with is not None:
            raise self.fail_with
        self.mounts.append(
            {
                "host_port": host_port,
                "container_id": container_id,
                "provider": provider,
                "token": request.token,
                "client_id": request.client_id,
                "client_secret": request.client_secret,
            }
        )
        self.mounted[(host_port, provider)] = container_id
        folder = "Google Drive" if provider == "google_drive" else "Dropbox"
        return self.root / str(host_port) / folder

    async def unmount_container(self, host_port: int, *, container_id: str | None = None) -> None:
        """Like the real one: with `container_id`, another container's mounts are spared."""
        self.unmounted.append((host_port, container_id))
        for (port, provider), owner in list(self.mounted.items()):
            if port == host_port and container_id in (None, owner):
                del self.mounted[(port, provider)]


@dataclass
class Api:
    app: HostApi
    state: HostState
    registry: ContainerRegistry
    lifecycle: ContainerLifecycle
    metrics: Metrics
    mappings_dir: Path
    cloud_storage: FakeCloudStorage | None

    async def add_container(self, host_port: int, *, id: str | None = None) -> ContainerRecord:
        await self.lifecycle.on_running(
            ContainerInfo(id=id or container_id(host_port), host_port=host_port, running=True)
        )
        record = self.registry.by_host_port(host_port)
        assert record is not None
        return record

    def mapping_file(self, host_port: int, name: str) -> Path:
        return self.mappings_dir / container_id(host_port) / name


def make_api(
    tmp_path: Path,
    *,
    container_wait: float = 0.5,
    with_cloud_storage: bool = True,
    secret: str = SECRET,
    run_blocking: BlockingRunner = run_inline,
) -> Api:
    state = HostState(version="9.9.9", environment="localdev")
    registry = ContainerRegistry()
    state.count_pending_file_writes = registry.pending_file_writes
    mappings_dir = tmp_path / "containerResourceMappings"
    mappings_dir.mkdir(parents=True, exist_ok=True)
    # Inline file I/O by default: several tests here run under the autojump clock (see
    # run_inline); the benchmarks pass the service's own worker-thread runner.
    lifecycle = ContainerLifecycle(
        mappings_dir=mappings_dir, registry=registry, run_blocking=run_blocking
    )
    metrics = Metrics()
    cloud = FakeCloudStorage(root=tmp_path / "cloudStorage") if with_cloud_storage else None
    app = create_app(
        state=state,
        registry=registry,
        lifecycle=lifecycle,
        metrics=metrics,
        auth_secret=secret,
        cloud_storage=cloud,
        container_wait=container_wait,
    )
    return Api(app, state, registry, lifecycle, metrics, mappings_dir, cloud)


def snapshot(api: Api) -> tuple[list[ContainerRecord], dict[str, bytes]]:
    """Everything a request could change: the records and every mapping file's content."""
    records = [ContainerRecord(**vars(r)) for r in api.registry.records()]
    for record in records:
        record.cloud_storage = list(record.cloud_storage)
    files = {
        str(path.relative_to(api.mappings_dir)): path.read_bytes()
        for path in sorted(api.mappings_dir.rglob("*"))
        if path.is_file()
    }
    return records, files


@dataclass
class Running:
    api: Api
    url: str
    tls: TlsFiles
    stop: trio.Event


@asynccontextmanager
async def running_api(
    tmp_path: Path,
    *,
    graceful_timeout: float = 3.0,
    api: Api | None = None,
    max_connections: int = 256,
    request_slots: int = DEFAULT_REQUEST_SLOTS,
    bind: str = "127.0.0.1:0",
    **api_args: float,
) -> AsyncIterator[Running]:
    """The app served over TLS by hypercorn on `bind`; stopped (drained) on exit."""
    api = api or make_api(tmp_path, **api_args)  # type: ignore[arg-type]
    tls = generate_certificate(tmp_path / "private")
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            functools.partial(
                serve_api,
                api.app,
                bind=bind,
                certfile=tls.certfile,
                keyfile=tls.keyfile,
                shutdown_trigger=stop.wait,
                graceful_timeout=graceful_timeout,
                max_connections=max_connections,
                metrics_registry=api.metrics.registry,
                request_slots=request_slots,
            )
        )
        yield Running(api, url, tls, stop)
        stop.set()


async def cli_against_api(
    tmp_path: Path, main: Callable[..., int], bound: float, **cli_args: Any
) -> int:
    """`main(url=<a running API's URL>, **cli_args)`, a command-line entry point, run in a
    thread (it blocks) against a fresh API; its exit code. The whole bounded by `bound`."""
    with trio.fail_after(bound):
        async with running_api(tmp_path) as running:
            return await trio.to_thread.run_sync(
                functools.partial(main, url=running.url, **cli_args)
            )


def tls_client(running: Running) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=running.url, verify=ssl.create_default_context(cafile=str(running.tls.certfile))
    )
