"""The one log line of each API request: what a route adds to it, and how it is written.

A route notes its facts (`note_for_log`) in a context variable, not Quart's `g`: each request
runs in its own trio task with its own copy of the context, so the facts of one request never
reach another's line, and reading them needs no request context (the line is made after Quart
has popped it).

The lines are written in batches while the app is served (`RequestLines`). In the loaded
service a line cost ~100 us of the event loop's CPU, 6-7 % of a `set_container_dpi` answer,
where the same code run line after line costs ~21 us: each line ran with the caches cold from
the request around it. So a request leaves its line's facts in a list (about a microsecond),
and every `BATCH_INTERVAL` the lines are written one after the other, each with its own time.
A line reaches the journal at most that late; when serving stops, after the in-flight
requests are drained, the rest is written at once, and so is every later line (the lifespan's
end, a cancelled API task, and the tests' clients, which serve nothing, alike).

The logger is for the journal only: as Sentry breadcrumbs the lines reached only the events
of the scope around the API (hypercorn's own errors), never a request's (each has a scope of
its own, and the error handler's event names its request), and each cost as much again.
"""

from __future__ import annotations

import logging
import math
import time
from contextvars import ContextVar
from typing import Final

import trio

from fractal_hostd.process.telemetry import journal_only

BATCH_INTERVAL: Final = 0.02

request_logger: Final = journal_only(logging.getLogger("fractal_hostd.api.requests"))
logger = logging.getLogger(__name__)

_MESSAGE: Final = "%s %s %d %.1f ms"

_facts: ContextVar[dict[str, object] | None] = ContextVar("api_request_log_facts", default=None)


def note_for_log(**fields: object) -> None:
    """Facts for the request's one log line (never bodies or credentials)."""
    _facts.set(fields)


def noted_facts() -> dict[str, object]:
    return _facts.get() or {}


# One request's line: level, time (time.time()), method, path, status, latency (seconds),
# the route's facts.
_Line = tuple[int, float, str, str, int, float, dict[str, object]]


class RequestLines:
    """The request lines of one app, written in batches while it is served (module doc)."""

    def __init__(self, interval: float = BATCH_INTERVAL) -> None:
        self._interval = interval
        self._pending: list[_Line] = []
        self._added = trio.Event()
        self._batching = False

    def add(self, level: int, method: str, path: str, status: int, latency: float) -> None:
        """The line of a request just answered (its facts come from the current context)."""
        if not request_logger.isEnabledFor(level):
            return
        line = (level, time.time(), method, path, status, latency, noted_facts())
        if not self._batching:
            _write_or_say_why(line)
            return
        self._pending.append(line)
        if len(self._pending) == 1:
            self._added.set()

    async def run(self) -> None:
        """Write the lines added while this runs in batches, until cancelled (the app's
        nursery is, when serving ends); then what waits, and every later line at once."""
        self._batching = True
        try:
            while True:
                await self._added.wait()
                await trio.sleep(self._interval)
                self._added = trio.Event()
                self._flush()
        finally:
            self._batching = False
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for line in pending:
            _write_or_say_why(line)


def _write_or_say_why(line: _Line) -> None:
    # Logging never raises (see logs.RedactingFilter), least of all here: an exception would
    # end the batch task, and with it the API. A fact named like a LogRecord attribute, for
    # one, makes `makeRecord` raise.
    try:
        _write(line)
    except Exception:
        logger.exception("a request's log line could not be written")


def _write(line: _Line) -> None:
    level, created, method, path, status, latency, facts = line
    latency_ms = latency * 1000
    record = request_logger.makeRecord(
        request_logger.name,
        level,
        __file__,
        0,
        _MESSAGE,
        (method, path, status, latency_ms),
        None,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(latency_ms, 2),
            **facts,
        },
    )
    # The request's own time, not the batch's (`msecs` as LogRecord computes it).
    record.created = created
    record.msecs = math.floor((created - int(created)) * 1000) + 0.0
    request_logger.handle(record)
