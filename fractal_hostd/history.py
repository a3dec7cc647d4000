"""Recent history for `GET /status`: what happened to each container lately, and the
service's last errors. Both are bounded rings, so a long-lived host keeps a constant size.

Per container (by id), its last `PER_CONTAINER` transitions with their times: `seen` (the
start event, or found by a reconcile), `tty assigned`, `files written`, `dpi set`,
`mounted`, `died` (or `gone` when a reconcile found it gone without an event). A container
that died stays listed among the last `GONE_KEPT` gone ones, with its transitions, so
"what happened to the container on port 40012?" has an answer after it is gone.

Sources, each where the fact is known: the Docker event stream through
`DockerStatus.listeners` (start, files written, die/destroy, and after every reconcile a diff
against the registry, which covers adoption at start-up and anything an event missed); the
API for `dpi set` and `mounted`.

The errors ring is a logging handler that keeps the last `ERRORS_KEPT` records at ERROR or
above, redacted by the same filter as the log output (no secret reaches /status either).
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from fractal_hostd.process.logs import RedactingFilter

PER_CONTAINER = 12
GONE_KEPT = 20
ERRORS_KEPT = 20
_MAX_MESSAGE = 500  # characters of one error message kept


class _Record(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def host_port(self) -> int: ...
    @property
    def tty(self) -> int | None: ...


Records = Callable[[], Sequence[_Record]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ContainerHistory:
    """Transitions per container; a DockerStatusListener (see hoststate.py)."""

    def __init__(self, records: Records, *, now: Callable[[], dt.datetime] = _now) -> None:
        self._records = records
        self._now = now
        self._live: dict[str, collections.deque[dict[str, Any]]] = {}
        self._ports: dict[str, int] = {}
        self._gone: collections.deque[dict[str, Any]] = collections.deque(maxlen=GONE_KEPT)

    def record(
        self,
        container_id: str,
        what: str,
        detail: str | None = None,
        at: dt.datetime | None = None,
    ) -> None:
        ring = self._live.setdefault(container_id, collections.deque(maxlen=PER_CONTAINER))
        entry: dict[str, Any] = {"at": (at or self._now()).isoformat(), "event": what}
        if detail is not None:
            entry["detail"] = detail
        ring.append(entry)

    def transitions(self, container_id: str) -> list[dict[str, Any]]:
        return list(self._live.get(container_id, ()))

    def gone(self) -> list[dict[str, Any]]:
        """The last containers that went away, newest first."""
        return list(reversed(self._gone))

    def _went(self, container_id: str, what: str, at: dt.datetime | None = None) -> None:
        if container_id not in self._live:
            return  # never known (not managed), or already moved to the gone ring
        self.record(container_id, what, at=at)
        self._gone.append(
            {
                "id": container_id,
                "host_port": self._ports.pop(container_id, None),
                "transitions": list(self._live.pop(container_id)),
            }
        )

    def _arrived(self, record: _Record, how: str, at: dt.datetime | None = None) -> None:
        self.record(record.id, "seen", how, at=at)
        self._ports[record.id] = record.host_port
        if record.tty is None:
            self.record(record.id, "no tty", "the TTY pool is exhausted")
        else:
            self.record(record.id, "tty assigned", f"tty {record.tty}")
        self.record(record.id, "files written")

    # -- DockerStatusListener -------------------------------------------------------------

    def files_written(self, event: Mapping[str, Any], seconds: float) -> None:
        container_id = _event_container(event)
        if container_id is None or container_id in self._live:
            return
        record = next((r for r in self._records() if r.id == container_id), None)
        if record is not None:
            self._arrived(record, "start event", at=_event_time(event))

    def event_processed(self, event: Mapping[str, Any], lag_seconds: float | None) -> None:
        action = str(event.get("Action", "")).split(": ", 1)[0]
        container_id = _event_container(event)
        if (
            container_id is not None
            and action in ("die", "destroy")
            and all(r.id != container_id for r in self._records())
        ):
            self._went(container_id, "died" if action == "die" else "destroyed")

    def reconcile_done(self, duration_seconds: float | None, ok: bool) -> None:
        live = {r.id: r for r in self._records()}
        for container_id in [c for c in self._live if c not in live]:
            self._went(container_id, "gone", None)
        for container_id, record in live.items():
            if container_id not in self._live:
                self._arrived(record, "reconcile")


def _event_container(event: Mapping[str, Any]) -> str | None:
    actor = event.get("Actor")
    container_id = actor.get("ID") if isinstance(actor, Mapping) else None
    container_id = container_id or event.get("id")
    return container_id if isinstance(container_id, str) and container_id else None


def _event_time(event: Mapping[str, Any]) -> dt.datetime | None:
    nanos = event.get("timeNano")
    if type(nanos) is int:
        return dt.datetime.fromtimestamp(nanos / 1e9, dt.UTC)
    return None


class ErrorRing(logging.Handler):
    """Keeps the last `ERRORS_KEPT` records at ERROR or above, redacted, for /status."""

    def __init__(self, size: int = ERRORS_KEPT) -> None:
        super().__init__(logging.ERROR)
        self.addFilter(RedactingFilter())
        self._ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message} ({type(record.exc_info[1]).__name__})"
        self._ring.append(
            {
                "at": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": message[:_MAX_MESSAGE],
            }
        )

    def records(self) -> list[dict[str, Any]]:
        """Oldest first."""
        return list(self._ring)


_service_errors: ErrorRing | None = None


def service_errors() -> ErrorRing:
    """The process's error ring, attached to the root logger (again, if it was removed)."""
    global _service_errors
    if _service_errors is None:
        _service_errors = ErrorRing()
    root = logging.getLogger()
    if _service_errors not in root.handlers:
        root.addHandler(_service_errors)
    return _service_errors
