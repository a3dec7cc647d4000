"""Shared runtime facts about this host, read by the API and written by the child tasks.

Plain data at the ground floor: every layer may import it, it imports nothing of ours.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    """Why the host drains: a spot interruption or rebalance recommendation seen in instance
    metadata, or an operator's `POST /drain`."""

    kind: str  # "spot", "rebalance" or "operator"
    action: str | None  # terminate/stop/hibernate for spot, None otherwise
    time: str  # the time IMDS gives for the notice (for an operator: when it was asked)
    seen_at: dt.datetime
    reason: str | None = None  # the operator's words, if any


DrainHook = Callable[[DrainNotice], Awaitable[None]]


class DockerStatusListener(Protocol):
    """Who wants each observation as it happens (the metrics' histograms, the history)."""

    def event_processed(self, event: Mapping[str, Any], lag_seconds: float | None) -> None: ...
    def files_written(self, event: Mapping[str, Any], seconds: float) -> None: ...
    def reconcile_done(self, duration_seconds: float | None, ok: bool) -> None: ...


@dataclass
class DockerStatus:
    """The event stream's health, updated by the Docker event task."""

    connected: bool = False
    events_processed: int = 0
    reconnects: int = 0
    # Event-stream lag: how long after dockerd's event time the last event was handled.
    last_event_lag_seconds: float | None = None
    # The last successful reconcile: trio clock (for its age) and Unix time (for metrics).
    last_reconcile_at: float | None = None
    last_reconcile_unix: float | None = None
    last_reconcile_duration_seconds: float | None = None
    reconcile_failures: int = 0
    listeners: list[DockerStatusListener] = field(default_factory=list, repr=False, compare=False)

    def listen(self, listener: DockerStatusListener, *, replacing: type | None = None) -> None:
        """Add `listener`, first removing any listener of type `replacing`."""
        if replacing is not None:
            self.listeners[:] = [x for x in self.listeners if not isinstance(x, replacing)]
        self.listeners.append(listener)

    def event_processed(self, event: Mapping[str, Any]) -> None:
        """One event handled (called by the event stream, whatever the action)."""
        self.events_processed += 1
        lag = _seconds_since_event(event)
        if lag is not None:
            self.last_event_lag_seconds = lag
        for listener in self.listeners:
            listener.event_processed(event, lag)

    def files_written(self, event: Mapping[str, Any]) -> None:
        """A `start` event's tty and hostPort files are written."""
        if str(event.get("Action", "")).split(": ", 1)[0] != "start":
            return  # a replayed die of a restarted container: not a start's latency
        seconds = _seconds_since_event(event)
        if seconds is not None:
            for listener in self.listeners:
                listener.files_written(event, seconds)

    def reconciled(self, started_at: float) -> None:
        """A reconcile that began at trio time `started_at` succeeded just now."""
        now = trio.current_time()
        self.last_reconcile_at = now
        self.last_reconcile_unix = time.time()
        self.last_reconcile_duration_seconds = now - started_at
        for listener in self.listeners:
            listener.reconcile_done(now - started_at, ok=True)

    def reconcile_failed(self) -> None:
        self.reconcile_failures += 1
        for listener in self.listeners:
            listener.reconcile_done(None, ok=False)


def _seconds_since_event(event: Mapping[str, Any]) -> float | None:
    """Wall-clock seconds since dockerd stamped `event` (same host, same clock); None when
    the event carries no time."""
    nanos = event.get("timeNano")
    if type(nanos) is int:
        stamped = nanos / 1e9
    elif type(event.get("time")) is int:
        stamped = float(event["time"])
    else:
        return None
    return max(0.0, time.time() - stamped)


@dataclass(frozen=True)
class HeartbeatRecord:
    number: int
    sent_at: dt.datetime
    ok: bool
    dying: bool = False
    round_trip_seconds: float | None = None


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
    # Set once start-up (contract §6) completed: /ready is 503 before.
    started_at: dt.datetime | None = None
    # Containers whose mapping files wait for a retried write: the container registry counts
    # them (the composition root sets the source; this floor imports nothing of ours).
    count_pending_file_writes: Callable[[], int] = field(
        default=lambda: 0, repr=False, compare=False
    )
    # What draining additionally does (immediate heartbeat, Sentry): set by the supervisor.
    drain_hook: DrainHook | None = field(default=None, repr=False, compare=False)

    @property
    def pending_file_writes(self) -> int:
        return self.count_pending_file_writes()

    def mark_started(self) -> None:
        self.started_at = dt.datetime.now(dt.UTC)

    def start_draining(self, notice: DrainNotice) -> bool:
        """Enter draining once; returns False when the host was already draining."""
        if self.draining is not None:
            return False
        self.draining = notice
        self.draining_started.set()
        return True
