"""Prometheus metrics of one service instance, served by `GET /metrics`.

What is worth paging on (docs/api.md lists every series): the Docker event stream's lag and
the time from a container's start event to its files, reconcile duration, failures and last
success, cloud-storage mount duration and failures, pending file writes, the heartbeat's
round trip, failures and last success, and the process itself (RSS, fds, CPU, start time).

Observations that only the code doing the work can make (API requests, heartbeats, event
lag, reconciles, mounts) go into ordinary prometheus_client counters and histograms; the
Docker stream reports them through `DockerStatus.listeners`, which `track` points here.
Everything that already exists as state — containers, free TTYs, draining, the Docker
stream's counts, last successes — is read at scrape time by a custom collector instead of
being mirrored: a mirror can drift, a read cannot.

No `_created` series: prometheus_client would add one per counter and histogram (and per
label child), doubling the series count for a fact every one of them shares — they are all
created at process start, which `process_start_time_seconds` already says; Prometheus
detects counter resets without them. `disable_created_metrics()` is process-wide, which is
what we want in the service.

Each `Metrics` has its own `CollectorRegistry` (not the process-global one), so tests and
several instances in one process never see each other's numbers.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fractal_hostd.event_priority import EventPriority
from fractal_hostd.hoststate import HeartbeatRecord, HostState

disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "fractal_hostd"
# API answers are fast file writes or waits bounded by FRACTAL_CONTAINER_WAIT (default 10 s).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Docker event → handled, and start event → files: milliseconds when healthy; seconds mean a
# backlog or a slow disk; the 60 s bucket catches events replayed after a reconnect.
_EVENT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A reconcile lists and inspects every running container (a few ms each over the socket).
_RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# An rclone mount answers once the mount is live: seconds, bounded by its own timeout.
_MOUNT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
# The webserver client's timeout is 5 s.
_HEARTBEAT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


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
        self.heartbeat_round_trip = Histogram(
            "heartbeat_round_trip_seconds",
            "Time from sending a heartbeat to the webserver's answer (or the failure).",
            namespace=PREFIX,
            buckets=_HEARTBEAT_BUCKETS,
            registry=self.registry,
        )
        self.event_lag = Histogram(
            "docker_event_lag_seconds",
            "Time from dockerd's event timestamp to the event being handled.",
            namespace=PREFIX,
            buckets=_EVENT_BUCKETS,
            registry=self.registry,
        )
        self.start_to_files = Histogram(
            "container_start_to_files_seconds",
            "Time from a container's start event to its tty and hostPort files being written.",
            namespace=PREFIX,
            buckets=_EVENT_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "docker_reconcile_duration_seconds",
            "Duration of successful reconciles (list + inspect + lifecycle).",
            namespace=PREFIX,
            buckets=_RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_failures = Counter(
            "docker_reconcile_failures",
            "Reconciles whose lifecycle step failed (retried at the next reconcile).",
            namespace=PREFIX,
            registry=self.registry,
        )
        self.mount_duration = Histogram(
            "cloud_storage_mount_duration_seconds",
            "Time a cloud-storage mount took until live, by provider (successful mounts).",
            ["provider"],
            namespace=PREFIX,
            buckets=_MOUNT_BUCKETS,
            registry=self.registry,
        )
        self.mount_failures = Counter(
            "cloud_storage_mount_failures",
            "Cloud-storage mounts that failed, by provider.",
            ["provider"],
            namespace=PREFIX,
            registry=self.registry,
        )
        self.last_heartbeat_ok_unix: float | None = None
        ProcessCollector(namespace="", registry=self.registry)
        self._build = Info("build", "The running build.", namespace=PREFIX, registry=self.registry)

    # -- observations -------------------------------------------------------------------

    def heartbeat_sent(self, record: HeartbeatRecord | None) -> None:
        """One heartbeat attempt finished (the heartbeat task's `on_result`)."""
        if record is None:
            return
        self.heartbeats.labels(result="ok" if record.ok else "failed").inc()
        if record.round_trip_seconds is not None:
            self.heartbeat_round_trip.observe(record.round_trip_seconds)
        if record.ok:
            self.last_heartbeat_ok_unix = record.sent_at.timestamp()

    def mount_done(self, provider: str, seconds: float, *, ok: bool) -> None:
        if ok:
            self.mount_duration.labels(provider=provider).observe(seconds)
        else:
            self.mount_failures.labels(provider=provider).inc()

    # DockerStatusListener (hoststate.py): the event stream's observations as they happen.

    def event_processed(self, event: Mapping[str, Any], lag_seconds: float | None) -> None:
        if lag_seconds is not None:
            self.event_lag.observe(lag_seconds)

    def files_written(self, event: Mapping[str, Any], seconds: float) -> None:
        self.start_to_files.observe(seconds)

    def reconcile_done(self, duration_seconds: float | None, ok: bool) -> None:
        if ok and duration_seconds is not None:
            self.reconcile_duration.observe(duration_seconds)
        elif not ok:
            self.reconcile_failures.inc()

    def track(
        self,
        *,
        state: HostState,
        containers: ContainerView,
        priority: EventPriority | None = None,
    ) -> None:
        """Export gauges read from `state`, `containers` and `priority` (how long container
        starts held the API) at every scrape (the API's `create_app` calls this; calling it
        again replaces the previous sources)."""
        if self._state_collector is not None:
            self.registry.unregister(self._state_collector)
        self._state_collector = _StateCollector(state, containers, self, priority)
        self.registry.register(self._state_collector)
        state.docker.listen(self, replacing=Metrics)
        self._build.info(
            {
                "version": state.version,
                "environment": state.environment,
                "python": platform.python_version(),
            }
        )


class _StateCollector(Collector):
    def __init__(
        self,
        state: HostState,
        containers: ContainerView,
        metrics: Metrics,
        priority: EventPriority | None,
    ) -> None:
        self._state = state
        self._containers = containers
        self._metrics = metrics
        self._priority = priority

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
            state.pending_file_writes,
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
        if self._priority is not None:
            yield CounterMetricFamily(
                f"{PREFIX}_api_holds",
                "Container starts that held the API's request handlers.",
                value=self._priority.holds,
            )
            yield CounterMetricFamily(
                f"{PREFIX}_api_held_seconds",
                "Time the API's request handlers waited for container starts.",
                value=self._priority.held_seconds,
            )
        yield _gauge(
            "started",
            "1 once start-up (contract §6) completed.",
            state.started_at is not None,
        )
        if state.docker.last_reconcile_unix is not None:
            yield _gauge(
                "docker_last_reconcile_success_timestamp_seconds",
                "Unix time of the last successful reconcile with dockerd.",
                state.docker.last_reconcile_unix,
            )
        if state.last_heartbeat is not None:
            yield _gauge(
                "last_heartbeat_timestamp_seconds",
                "Unix time of the last heartbeat sent.",
                state.last_heartbeat.sent_at.timestamp(),
            )
        if self._metrics.last_heartbeat_ok_unix is not None:
            yield _gauge(
                "last_heartbeat_success_timestamp_seconds",
                "Unix time of the last heartbeat the webserver accepted.",
                self._metrics.last_heartbeat_ok_unix,
            )

    def describe(self) -> Iterator[Metric]:
        # Descriptions would call collect() at registration; an empty one skips that.
        return iter(())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=float(value))
