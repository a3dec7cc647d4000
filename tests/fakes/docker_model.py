"""Data of the fake Docker Engine: containers as dockerd describes them, event filters,
timestamps. No I/O: `docker_engine.py` serves it over HTTP."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

BUSYBOX = "fractal-hostd-test-busybox:latest"
MANAGED_PORT = "32262/tcp"


@dataclass
class FakeContainer:
    id: str
    name: str
    image: str
    cmd: list[str]
    exposed: dict[str, Any]
    port_bindings: dict[str, list[dict[str, str]]]
    created: float = field(default_factory=time.time)
    status: str = "created"  # created | running | paused | exited
    exit_code: int = 0
    pid: int = 0
    ports: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        """Docker's State.Running: true for a paused container too (its process exists)."""
        return self.status in ("running", "paused")

    @property
    def paused(self) -> bool:
        return self.status == "paused"

    def inspect(self) -> dict[str, Any]:
        return {
            "Id": self.id,
            "Created": iso(self.created),
            "Path": self.cmd[0] if self.cmd else "",
            "Args": self.cmd[1:],
            "State": {
                "Status": self.status,
                "Running": self.running,
                "Paused": self.paused,
                "Restarting": False,
                "OOMKilled": False,
                "Dead": False,
                "Pid": self.pid,
                "ExitCode": self.exit_code,
                "Error": "",
            },
            "Image": "sha256:" + "0" * 64,
            "Name": "/" + self.name,
            "Config": {
                "Image": self.image,
                "Cmd": self.cmd,
                "ExposedPorts": self.exposed or None,
                "Labels": {},
            },
            "HostConfig": {"NetworkMode": "default", "PortBindings": self.port_bindings},
            "NetworkSettings": {"Ports": self.ports},
        }

    def summary(self) -> dict[str, Any]:
        ports = [
            {
                "IP": b["HostIp"],
                "PrivatePort": int(p.split("/")[0]),
                "PublicPort": int(b["HostPort"]),
                "Type": p.split("/")[1],
            }
            for p, bindings in self.ports.items()
            for b in bindings
        ]
        return {
            "Id": self.id,
            "Names": ["/" + self.name],
            "Image": self.image,
            "Command": " ".join(self.cmd),
            "Created": int(self.created),
            "Ports": ports,
            "Labels": {},
            "State": self.status,
            "Status": _summary_status(self),
        }


def _summary_status(container: FakeContainer) -> str:
    if container.paused:
        return "Up (Paused)"
    return "Up" if container.running else f"Exited ({container.exit_code})"


def iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def matches(filters: dict[str, list[str]], event: dict[str, Any]) -> bool:
    if "type" in filters and event["Type"] not in filters["type"]:
        return False
    if "event" in filters and event["Action"] not in filters["event"]:
        return False
    if "container" in filters:
        actor = event["Actor"]
        names = {actor["ID"], actor["Attributes"].get("name", "")}
        if not any(n in names or actor["ID"].startswith(n) for n in filters["container"]):
            return False
    return True


def parse_timestamp(value: str) -> int:
    """dockerd's since/until: "<sec>[.<nanosec>]" -> nanoseconds."""
    seconds, _, fraction = value.partition(".")
    nanos = int(fraction) * 10 ** (9 - len(fraction)) if fraction else 0
    return int(seconds) * 1_000_000_000 + nanos
