"""The `GET /status` document: a JSON view of HostState, the container registry and the
recent history (history.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry
from fractal_hostd.history import ContainerHistory, ErrorRing
from fractal_hostd.hoststate import DrainNotice, HostState


def status_document(
    state: HostState,
    registry: ContainerRegistry,
    history: ContainerHistory,
    errors: ErrorRing,
) -> dict[str, Any]:
    notice, heartbeat, docker = state.draining, state.last_heartbeat, state.docker
    return {
        "version": state.version,
        "environment": state.environment,
        "api_url": state.api_url,
        "metadata": dataclasses.asdict(state.metadata) if state.metadata else None,
        "started_at": None if state.started_at is None else state.started_at.isoformat(),
        "draining": None if notice is None else drain_summary(notice),
        "docker": {
            "connected": docker.connected,
            "events_processed": docker.events_processed,
            "reconnects": docker.reconnects,
            "last_event_lag_seconds": docker.last_event_lag_seconds,
            "last_reconcile_at": None
            if docker.last_reconcile_unix is None
            else _iso(docker.last_reconcile_unix),
            "last_reconcile_duration_seconds": docker.last_reconcile_duration_seconds,
            "reconcile_failures": docker.reconcile_failures,
        },
        "pending_file_writes": state.pending_file_writes,
        "containers": [
            {
                **container_summary(record),
                "history": history.transitions(record.id),
            }
            for record in sorted(registry.records(), key=lambda r: r.host_port)
        ],
        "recently_gone": history.gone(),
        "recent_errors": errors.records(),
        "free_ttys": registry.free_ttys,
        "last_heartbeat": None
        if heartbeat is None
        else {
            "number": heartbeat.number,
            "sent_at": heartbeat.sent_at.isoformat(),
            "ok": heartbeat.ok,
            "dying": heartbeat.dying,
        },
    }


def drain_summary(notice: DrainNotice) -> dict[str, Any]:
    """Why the host drains and since when (`seen_at`)."""
    return {
        "kind": notice.kind,
        "action": notice.action,
        "time": notice.time,
        "seen_at": notice.seen_at.isoformat(),
        "reason": notice.reason,
    }


def _iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat()


def container_summary(record: ContainerRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "host_port": record.host_port,
        "tty": record.tty,
        "dpi": record.dpi,
        "container_arn": record.container_arn,
        "ready": record.ready,
        "files_pending": record.files_pending,
        "cloud_storage": list(record.cloud_storage),
    }
