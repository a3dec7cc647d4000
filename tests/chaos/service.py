"""The real `fractal-hostd` as a subprocess (`python -m fractal_hostd run`), started, SIGKILLed,
SIGTERMed and restarted by the chaos driver, and its HTTPS API as the webserver calls it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.service_harness import AUTH_SECRET, REPO

TERM_WAIT = 20.0  # the whole shutdown path fits in systemd's TimeoutStopSec; much less here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Run:
    """One lifetime of the service process."""

    number: int
    pid: int
    first_heartbeat: int  # index into the webserver's heartbeat list where this run starts
    stop: str | None = None  # "term" | "kill" | None while running
    exit_code: int | None = None
    last_heartbeat: int | None = None  # index where it ends (exclusive) once stopped


@dataclass
class Service:
    env: dict[str, str]
    log_path: Path
    api_port: int
    process: trio.Process | None = None
    runs: list[Run] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.returncode is None else None

    async def start(self, heartbeats_so_far: int) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== chaos: start run {len(self.runs)} =====\n".encode())
            log.flush()
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "fractal_hostd", "run"],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
        self.runs.append(Run(len(self.runs), self.process.pid, heartbeats_so_far))

    async def stop(self, how: str, heartbeats_so_far: object) -> int:
        """`how` is "term" (SIGTERM, wait) or "kill" (SIGKILL). Returns the exit code."""
        assert self.process is not None
        run = self.runs[-1]
        run.stop = how
        self.process.send_signal(signal.SIGTERM if how == "term" else signal.SIGKILL)
        with trio.move_on_after(TERM_WAIT):
            await self.process.wait()
        if self.process.returncode is None:
            run.stop = "kill (term timed out)"
            self.process.kill()
            await self.process.wait()
        code = self.process.returncode
        assert code is not None  # waited for above
        run.exit_code = code
        return code

    def close_run(self, heartbeat_count: int) -> None:
        self.runs[-1].last_heartbeat = heartbeat_count

    async def kill_now(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            with trio.move_on_after(10, shield=True):
                await self.process.wait()

    def resources(self) -> tuple[int, int] | None:
        """(open fds, RSS in KiB) of the service process, None when it is not running."""
        pid = self.pid
        if pid is None:
            return None
        with contextlib.suppress(OSError):
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return fds, int(line.split()[1])
        return None


@dataclass
class ApiResult:
    call: str
    status: int | None  # None: no answer (connection refused, timeout: the service is down)
    body: str = ""


class Api:
    def __init__(self, port: int) -> None:
        self.port = port
        self.client = httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{port}",
            verify=False,  # the service's certificate is self-signed, made at start-up
            headers={"Authorization": f"Bearer {AUTH_SECRET}"},
            timeout=httpx.Timeout(40.0, connect=2.0),
        )
        self.results: list[ApiResult] = []

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self, method: str, path: str, body: dict[str, object] | None = None
    ) -> ApiResult:
        call = f"{method} {path} {body or ''}"
        try:
            response = await self.client.request(method, path, json=body)
            result = ApiResult(call, response.status_code, response.text[:300])
        except httpx.HTTPError as exc:
            result = ApiResult(call, None, repr(exc)[:300])
        self.results.append(result)
        return result

    async def status(self) -> dict[str, Any] | None:
        """GET /status (its answer is checked for 5xx like every other call)."""
        try:
            response = await self.client.get("/status", timeout=5.0)
        except httpx.HTTPError as exc:
            self.results.append(ApiResult("GET /status", None, repr(exc)[:300]))
            return None
        self.results.append(ApiResult("GET /status", response.status_code, response.text[:300]))
        if response.status_code != 200:
            return None
        document: dict[str, Any] = response.json()
        return document

    async def healthy(self) -> bool:
        try:
            response = await self.client.get("/health", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def monotonic() -> float:
    return time.monotonic()
