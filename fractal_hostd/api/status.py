"""The `GET /status` document: a JSON view of HostState and the container registry."""

from __future__ import annotations

import dataclasses
from typing import Any

from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry
from fractal_hostd.hoststate import HostState


def status_document(state: HostState, registry: ContainerRegistry) -> dict[str, Any]:
    notice, heartbeat = state.draining, state.last_heartbeat
    return {
        "version": state.version,
        "environment": state.environment,
        "api_url": state.api_url,
        "metadata": dataclasses.asdict(state.metadata) if state.metadata else None,
        "draining": None
        if notice is None
        else {
            "kind": notice.kind,
            "action": notice.action,
            "time": notice.time,
            "seen_at": notice.seen_at.isoformat(),
        },
        "docker": dataclasses.asdict(state.docker),
        "containers": [
            container_summary(record)
            for record in sorted(registry.records(), key=lambda r: r.host_port)
        ],
        "free_ttys": registry.free_ttys,
        "pending_file_writes": sum(1 for record in registry.records() if record.files_pending),
        "last_heartbeat": None
        if heartbeat is None
        else {
            "number": heartbeat.number,
            "sent_at": heartbeat.sent_at.isoformat(),
            "ok": heartbeat.ok,
            "dying": heartbeat.dying,
        },
    }


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
