"""Shared runtime facts about this host, read by the API and written by the child tasks.

Plain data at the ground floor: every layer may import it, it imports nothing of ours.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import trio


@dataclass(frozen=True)
class InstanceMetadata:
    """What EC2 instance metadata says about this host."""

    ami_id: str
    ami_launch_index: str
    instance_id: str
    instance_type: str
    region: str
    availability_zone: str
    public_ipv4: str | None
    local_ipv4: str | None = None  # for the TLS certificate's SAN; not part of any contract call


@dataclass(frozen=True)
class DrainNotice:
    """A spot interruption or rebalance recommendation seen in instance metadata."""

    kind: str  # "spot" or "rebalance"
    action: str | None  # terminate/stop/hibernate for spot, None for rebalance
    time: str  # the time IMDS gives for the notice
    seen_at: dt.datetime


@dataclass
class DockerStatus:
    """The event stream's health, updated by the Docker event task."""

    connected: bool = False
    events_processed: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class HeartbeatRecord:
    number: int
    sent_at: dt.datetime
    ok: bool
    dying: bool = False


@dataclass
class HostState:
    version: str
    environment: str
    metadata: InstanceMetadata | None = None
    draining: DrainNotice | None = None
    docker: DockerStatus = field(default_factory=DockerStatus)
    last_heartbeat: HeartbeatRecord | None = None
    api_url: str | None = None
    draining_started: trio.Event = field(default_factory=trio.Event)

    def start_draining(self, notice: DrainNotice) -> bool:
        """Enter draining once; returns False when the host was already draining."""
        if self.draining is not None:
            return False
        self.draining = notice
        self.draining_started.set()
        return True
