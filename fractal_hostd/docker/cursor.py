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
