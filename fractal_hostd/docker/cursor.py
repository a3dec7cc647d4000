"""Resume position and duplicate filter for the `/events` stream.

After a drop the stream is re-opened with `since=<last timeNano>`. dockerd's `since` is
inclusive, and events that share a timeNano are possible, so the replay repeats events we
already handled; they are recognised by (timeNano, id, Action). The remembered keys are
bounded: dockerd replays at most its last 256 events, so a window of a few times that is
enough to catch every duplicate.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

EventKey = tuple[int, str, str]


def event_key(event: dict[str, Any]) -> EventKey | None:
    """(timeNano, id, Action) of an event, or None when the event lacks them."""
    time_nano = event.get("timeNano")
    actor = event.get("Actor")
    actor_id = actor.get("ID") if isinstance(actor, dict) else None
    container_id = actor_id or event.get("id")
    action = event.get("Action") or event.get("status")
    if not isinstance(time_nano, int) or not isinstance(container_id, str):
        return None
    if not isinstance(action, str):
        return None
    return (time_nano, container_id, action)


def format_since(time_nano: int) -> str:
    """dockerd's "<sec>.<nanosec>" form; the nanoseconds must be zero-padded to 9 digits."""
    seconds, nanos = divmod(time_nano, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


class EventCursor:
    def __init__(self, window: int = 2048) -> None:
        self._window = window
        self._seen: OrderedDict[EventKey, None] = OrderedDict()
        self.last_time_nano: int | None = None

    def accept(self, event: dict[str, Any]) -> bool:
        """Record the event at once; False when it is a duplicate. For a consumer whose
        handling cannot fail half-way (a log line); the others use the two steps below."""
        if self.handled_before(event):
            return False
        self.record(event)
        return True

    def handled_before(self, event: dict[str, Any]) -> bool:
        """True when the event is a duplicate of one already handled (a `since` replay)."""
        key = event_key(event)
        return key is not None and key in self._seen

    def record(self, event: dict[str, Any]) -> None:
        """Mark the event handled. Called only once its handling is over: an event whose
        handling was cut short (dockerd lost half-way) is then replayed by `since`."""
        key = event_key(event)
        if key is None:
            return  # cannot be deduplicated; handlers are idempotent anyway
        self._seen[key] = None
        if len(self._seen) > self._window:
            self._seen.popitem(last=False)
        if self.last_time_nano is None or key[0] > self.last_time_nano:
            self.last_time_nano = key[0]

    @property
    def since(self) -> str | None:
        """Where to resume the stream, None before the first event."""
        if self.last_time_nano is None:
            return None
        return format_since(self.last_time_nano)


class RunStarts:
    """The timeNano of each container's latest `start` event handled, so that a `die` older
    than it, which belongs to an earlier run and came late (an engine that reorders, or a
    replay), is checked against the container's present state instead of acted on. Bounded:
    the oldest containers are forgotten first (their dies are then acted on as they come).

    A listing counts as a start seen for every container at the moment it began (`listed`):
    it showed each one's present run, so a die older than it may be of a run that ended
    before it (a container restarted while the service started, chaos seed 3002).
    """

    def __init__(self, window: int = 4096) -> None:
        self._window = window
        self._started: OrderedDict[str, int] = OrderedDict()
        self._listed = -1  # timeNano when the latest listing began

    def listed(self, time_nano: int) -> None:
        self._listed = max(self._listed, time_nano)

    def note(self, event: dict[str, Any]) -> None:
        key = event_key(event)
        if key is None:
            return
        time_nano, container_id, action = key
        if action == "destroy":
            self._started.pop(container_id, None)
        elif action == "start" and time_nano > self._started.get(container_id, -1):
            self._started[container_id] = time_nano
            self._started.move_to_end(container_id)
            if len(self._started) > self._window:
                self._started.popitem(last=False)

    def outdated(self, event: dict[str, Any]) -> bool:
        """True for an event older than its container's latest start handled, or than the
        latest listing."""
        key = event_key(event)
        return key is not None and key[0] < max(self._started.get(key[1], -1), self._listed)
