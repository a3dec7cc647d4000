"""What the Docker layer learned about one container, parsed from Docker's inspect JSON.

Contract §2: a container is managed when it publishes container port ``32262/tcp`` to a host
port; that host port is its identity towards the webserver. A paused container is live: Docker
reports it ``Running`` and ``Paused`` (status ``paused``), and it keeps its resources. Parsing
never raises: Docker's JSON has many optional and ``null`` fields, and a container we cannot
understand is simply not managed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MANAGED_PORT = "32262/tcp"
_MANAGED_PRIVATE_PORT = 32262
# Docker's State.Status values of a live container: a paused one is frozen, not gone.
_LIVE_STATUSES = frozenset({"running", "paused"})

_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def is_container_id(value: object) -> bool:
    """True for a full 64-hex Docker id: the only names we ever turn into paths."""
    return isinstance(value, str) and _CONTAINER_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class ContainerInfo:
    id: str  # full 64-hex id ("" when inspect gave none)
    host_port: int | None  # host port bound to 32262/tcp; None = not managed
    running: bool  # live: running or paused (contract §2)

    @classmethod
    def from_inspect(cls, inspect: dict[str, Any]) -> ContainerInfo:
        raw_id = inspect.get("Id")
        container_id = raw_id.lower() if isinstance(raw_id, str) else ""
        state = inspect.get("State")
        running = isinstance(state, dict) and _is_live(state)
        # A container whose id we could not use in a path cannot be managed.
        host_port = _published_host_port(inspect) if is_container_id(container_id) else None
        return cls(id=container_id, host_port=host_port, running=running)

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> ContainerInfo:
        """From one entry of ``GET /containers/json``: dockerd's own word on a container
        whose inspect failed. Its ``State`` is the status string, ``Ports`` a flat list."""
        raw_id = summary.get("Id")
        container_id = raw_id.lower() if isinstance(raw_id, str) else ""
        running = summary.get("State") in _LIVE_STATUSES
        host_port = _summary_host_port(summary) if is_container_id(container_id) else None
        return cls(id=container_id, host_port=host_port, running=running)


def _is_live(state: dict[str, Any]) -> bool:
    # Docker sets Running for a paused container too; Paused is read as well so that a
    # paused container is never taken for a dead one. Only a real `true` counts.
    return state.get("Running") is True or state.get("Paused") is True


def _summary_host_port(summary: dict[str, Any]) -> int | None:
    ports = summary.get("Ports")
    if not isinstance(ports, list):
        return None
    for entry in ports:
        if (
            isinstance(entry, dict)
            and entry.get("PrivatePort") == _MANAGED_PRIVATE_PORT
            and entry.get("Type") == "tcp"
        ):
            port = parse_port(entry.get("PublicPort"))
            if port is not None:
                return port
    return None


def _published_host_port(inspect: dict[str, Any]) -> int | None:
    # NetworkSettings.Ports holds the actual binding (also for "-p 32262", a random host
    # port) but only while the container runs; HostConfig.PortBindings holds what was asked.
    network = inspect.get("NetworkSettings")
    if isinstance(network, dict):
        port = _first_host_port(network.get("Ports"))
        if port is not None:
            return port
    host_config = inspect.get("HostConfig")
    if isinstance(host_config, dict):
        return _first_host_port(host_config.get("PortBindings"))
    return None


def _first_host_port(ports: object) -> int | None:
    if not isinstance(ports, dict):
        return None
    bindings = ports.get(MANAGED_PORT)
    if not isinstance(bindings, list):
        return None
    # IPv4 and IPv6 bindings of one "-p" come as two entries with the same port.
    for binding in bindings:
        if isinstance(binding, dict):
            port = parse_port(binding.get("HostPort"))
            if port is not None:
                return port
    return None


def parse_port(value: object) -> int | None:
    """A TCP port from Docker's string (or int) form; None for "", garbage or out of range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            return None
        number = int(value)
    elif isinstance(value, int):
        number = value
    else:
        return None
    return number if 1 <= number <= 65535 else None
