"""What a route adds to its request's one log line (written by `app.HostApi` at the end).

A context variable, not Quart's `g`: each request runs in its own trio task with its own copy
of the context, so the facts of one request never reach another's line, and reading them
needs no request context (the line is written after Quart has popped it).
"""

from __future__ import annotations

from contextvars import ContextVar

_facts: ContextVar[dict[str, object] | None] = ContextVar("api_request_log_facts", default=None)


def note_for_log(**fields: object) -> None:
    """Facts for the request's one log line (never bodies or credentials)."""
    _facts.set(fields)


def noted_facts() -> dict[str, object]:
    return _facts.get() or {}
