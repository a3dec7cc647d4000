"""Prometheus metrics of one service instance, served by `GET /metrics`.

Counters that only the code doing the work can know (API requests, heartbeats) are ordinary
prometheus_client counters. Everything that already exists as state — containers, free TTYs,
draining, the Docker stream's counts kept in `HostState.docker` — is read at scrape time by a
custom collector instead of being mirrored: a mirror can drift, a read cannot.

Each `Metrics` has its own `CollectorRegistry` (not the process-global one), so tests and
several instances in one process never see each other's numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fractal_hostd.hoststate import HostState

PREFIX = "fractal_hostd"
# API answers are fast file writes or waits bounded by FRACTAL_CONTAINER_WAIT (default 10 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _ReadyRecord(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def files_pending(self) -> bool: ...


class ContainerView(Protocol):
    """The read side of the container registry the collector needs."""

    def records(self) -> Sequence[_ReadyRecord]: ...

    @property
    def free_ttys(self) -> int: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._state_collector: _StateCollector | None = None
        self.heartbeats = Counter(
            "heartbeats",
            "Heartbeats sent to the webserver, by result.",
            ["result"],
            namespace=PREFIX,
            registry=self.registry,
        )
        self.requests = Counter(
            "api_requests",
            "HTTPS API requests answered, by route and status code.",
            ["endpoint", "status"],
            namespace=PREFIX,
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "api_request_duration_seconds",
            "Time from request received to answer ready, by route.",
            ["endpoint"],
            namespace=PREFIX,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        for result in ("ok", "failed"):
            self.heartbeats.labels(result=result)

    def track(self, *, state: HostState, containers: ContainerView) -> None:
        """Export gauges read from `state` and `containers` at every scrape (the API's
        `create_app` calls this; calling it again replaces the previous sources)."""
        if self._state_collector is not None:
            self.registry.unregister(self._state_collector)
        self._state_collector = _StateCollector(state, containers)
        self.registry.register(self._state_collector)


class _StateCollector(Collector):
    def __init__(self, state: HostState, containers: ContainerView) -> None:
        self._state = state
        self._containers = containers

    def collect(self) -> Iterator[Metric]:
        state, records = self._state, self._containers.records()
        yield _gauge("managed_containers", "Managed containers alive now.", len(records))
        yield _gauge(
            "ready_containers",
            "Managed containers whose .ready file is written.",
            sum(1 for record in records if record.ready and not record.files_pending),
        )
        yield _gauge("free_ttys", "TTYs left to assign.", self._containers.free_ttys)
        yield _gauge(
            "pending_file_writes",
            "Containers whose mapping files failed to write and are being retried.",
            sum(1 for record in records if record.files_pending),
        )
        yield _gauge(
            "draining",
            "1 once a spot interruption or rebalance notice was seen.",
            state.draining is not None,
        )
        yield _gauge(
            "docker_connected",
            "1 while the Docker event stream is subscribed.",
            state.docker.connected,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_docker_events_processed",
            "Docker events processed.",
            value=state.docker.events_processed,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_docker_stream_reconnects",
            "Reconnections of the Docker event stream.",
            value=state.docker.reconnects,
        )
        if state.last_heartbeat is not None:
            yield _gauge(
                "last_heartbeat_timestamp_seconds",
                "Unix time of the last heartbeat sent.",
                state.last_heartbeat.sent_at.timestamp(),
            )

    def describe(self) -> Iterator[Metric]:
        # Descriptions would call collect() at registration; an empty one skips that.
        return iter(())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=float(value))
