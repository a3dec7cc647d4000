"""Run fractal_hostd as a real subprocess against the fakes (webserver, IMDS, Sentry, Docker).

Used by the end-to-end tests and the benchmarks. Everything runs on loopback or in a tmp dir;
the child's stderr (its logs) goes to a file the test can read after the fact.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tests.fakes.docker_engine import FakeDockerEngine, running_fake_docker
from tests.fakes.imds import FakeImds, running_fake_imds
from tests.fakes.sentry import FakeSentry, running_fake_sentry
from tests.fakes.webserver import FakeWebserver, running_fake_webserver

REPO = Path(__file__).resolve().parent.parent
AUTH_SECRET = "e2e-shared-secret-do-not-log"  # a test value the logs must never show
# A cloud-storage mount request without its host port (the test adds its container's).
MOUNT_BODY = {
    "provider": "google_drive",
    "access_token": "ya29.e2e-access-made-up",
    "refresh_token": "1//e2e-refresh-made-up",
    "expiry": "2099-01-01T00:00:00Z",
    "token_type": "Bearer",
}


@dataclass
class Peers:
    webserver: FakeWebserver
    imds: FakeImds
    sentry: FakeSentry
    docker: FakeDockerEngine
    docker_socket: Path


@asynccontextmanager
async def running_peers(tmp_path: Path, *, sentry_blackhole: bool = False) -> AsyncIterator[Peers]:
    # A unix socket path must stay under 108 bytes: tmp_path of a long test name may not.
    socket_dir = Path(tempfile.mkdtemp(prefix="fhd-e2e-", dir="/tmp"))
    socket_path = socket_dir / "docker.sock"
    async with (
        running_fake_webserver() as webserver,
        running_fake_imds() as imds,
        running_fake_sentry(blackhole=sentry_blackhole) as sentry,
        running_fake_docker(socket_path) as docker,
    ):
        try:
            yield Peers(webserver, imds, sentry, docker, socket_path)
        finally:
            shutil.rmtree(socket_dir, ignore_errors=True)


def environ_without_service_settings() -> dict[str, str]:
    """This process's environment minus everything that configures the service (the test
    sets what it wants), systemd's hand-overs included."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FRACTAL_", "SENTRY_", "APP_ENV", "USE_PROD_SENTRY", "DOCKER_HOST"))
        and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "CREDENTIALS_DIRECTORY")
    }


def service_env(tmp_path: Path, peers: Peers, **extra: str) -> dict[str, str]:
    env = environ_without_service_settings()
    env.update(
        APP_ENV="dev",
        FRACTAL_ROOT=str(tmp_path / "fractal"),
        FRACTAL_PRIVATE_DIR=str(tmp_path / "private"),
        DOCKER_HOST=f"unix://{peers.docker_socket}",
        FRACTAL_API_BIND="127.0.0.1:0",
        FRACTAL_WEBSERVER_URL=peers.webserver.url,
        FRACTAL_WEBSERVER_AUTH_SECRET=AUTH_SECRET,
        FRACTAL_IMDS_URL=peers.imds.url,
        SENTRY_DSN=peers.sentry.dsn,
        USE_PROD_SENTRY="1",
        FRACTAL_SHUTDOWN_REPORT_TIMEOUT="2",
        FRACTAL_LOG_FORMAT="json",
        FRACTAL_LOG_LEVEL="debug",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class ServiceProcess:
    process: trio.Process
    log_path: Path
    exec_at: float  # time.monotonic() just before exec
    env: dict[str, str]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, signum: int = signal.SIGTERM) -> float:
        self.process.send_signal(signum)
        return time.monotonic()

    async def wait(self) -> int:
        return await self.process.wait()


@asynccontextmanager
async def running_service(
    tmp_path: Path,
    env: dict[str, str],
    argv: Sequence[str] = ("-m", "fractal_hostd", "run"),
) -> AsyncIterator[ServiceProcess]:
    """Start the service; on exit make sure it is gone (SIGKILL if a test left it running)."""
    log_path = tmp_path / "service.log"
    with log_path.open("wb") as log:
        exec_at = time.monotonic()
        process = await trio.lowlevel.open_process(
            [sys.executable, *argv], env=env, cwd=REPO, stdout=log, stderr=log
        )
    try:
        yield ServiceProcess(process, log_path, exec_at, env)
    finally:
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(10, shield=True):
                await process.wait()


@asynccontextmanager
async def started_service(
    tmp_path: Path, start_bound: float = 60, **extra: str
) -> AsyncIterator[tuple[Peers, ServiceProcess]]:
    """The service against fresh peers (`service_env` plus `extra`), yielded once start-up is
    done: the webserver has its first heartbeat."""
    async with (
        running_peers(tmp_path) as peers,
        running_service(tmp_path, service_env(tmp_path, peers, **extra)) as service,
    ):
        with trio.fail_after(start_bound):
            await peers.webserver.wait_for_heartbeats(1)
        yield peers, service


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m fractal_hostd ARGS` in `env`, its output captured (bounded: 60 s)."""
    return subprocess.run(
        [sys.executable, "-m", "fractal_hostd", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def api_client(tmp_path: Path, timeout: float) -> httpx.AsyncClient:
    """A client of the running service's API as its callers reach it: the URL it wrote into
    its private directory (by the name its certificate holds, localhost), that certificate
    verified, the webserver's bearer secret sent."""
    private = tmp_path / "private"
    return httpx.AsyncClient(
        base_url=(private / "api_url").read_text().strip().replace("127.0.0.1", "localhost"),
        verify=ssl.create_default_context(cafile=private / "cert.pem"),
        headers={"Authorization": f"Bearer {AUTH_SECRET}"},
        timeout=timeout,
    )
