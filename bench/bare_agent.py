"""The event path's floor: a bare trio agent doing the same work as the service, nothing else.

The same `start`/`die`/`destroy` events from the same engine (httpx over the unix socket, as
the service), an inspect for each `start`, the same files written with the same durability
(`hostPort_for_my_32262_tcp` and `tty` each a temporary file, fsync, rename; then the
directory and its parent fsynced: the service's four fsyncs) in one worker-thread hop per container,
the directory removed on `die`/`destroy`, the lowest free TTY from 10-63. What it leaves out
is what makes the service a service: reconnects and reconcile, no symlink safety (plain
path calls), no per-container lock, no retries, no log line, no metrics.

Used by bench/bench_docker.py; never by the service or the tests.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import trio

FILTERS = json.dumps({"type": ["container"], "event": ["start", "die", "destroy"]})
PORT = "32262/tcp"


def write_files(directory: Path, host_port: int, tty: int) -> None:
    """The service's durable sequence (containers/mapping.py): each file fsynced before its
    rename, then one fsync of the directory and one of its parent (the new entry)."""
    os.mkdir(directory, 0o755)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name, value in (("hostPort_for_my_32262_tcp", host_port), ("tty", tty)):
            tmp = f".{name}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
            try:
                os.write(fd, str(value).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    parent = os.open(directory.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(parent)
    finally:
        os.close(parent)


class BareAgent:
    def __init__(self, socket_path: str, mappings: Path) -> None:
        self._socket_path = socket_path
        self._mappings = mappings
        self._free = list(range(10, 64))
        self.ttys: dict[str, int] = {}
        self.events_processed = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        transport = httpx.AsyncHTTPTransport(uds=self._socket_path)
        timeout = httpx.Timeout(10.0, read=None)
        async with (
            httpx.AsyncClient(
                transport=transport, base_url="http://docker", timeout=timeout
            ) as http,
            http.stream("GET", "/events", params={"filters": FILTERS}) as response,
            trio.open_nursery() as nursery,
        ):
            send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)

            async def read() -> None:
                async with send:
                    async for line in response.aiter_lines():
                        if line:
                            send.send_nowait(json.loads(line))

            nursery.start_soon(read)
            task_status.started()
            async for event in receive:
                await self._handle(http, event)
                self.events_processed += 1

    async def _handle(self, http: httpx.AsyncClient, event: dict[str, Any]) -> None:
        container_id = event["id"]
        if event["Action"] == "start":
            response = await http.get(f"/containers/{container_id}/json")
            if response.status_code != 200:
                return
            inspect = response.json()
            bindings = (inspect["NetworkSettings"].get("Ports") or {}).get(PORT)
            if not inspect["State"]["Running"] or not bindings or not self._free:
                return
            tty = self._free.pop(0)
            host_port = int(bindings[0]["HostPort"])
            directory = self._mappings / container_id
            await trio.to_thread.run_sync(write_files, directory, host_port, tty)
            self.ttys[container_id] = tty
        elif container_id in self.ttys:
            directory = self._mappings / container_id
            await trio.to_thread.run_sync(shutil.rmtree, directory)
            self._free.append(self.ttys.pop(container_id))
            self._free.sort()
