"""The metadata poller child task: spot interruption notices and rebalance recommendations.

Every `interval` seconds (AWS recommends 5) it reads, in this order,
- `spot/instance-action`: 404 until an interruption is scheduled, then
  `{"action": "terminate"|"stop"|"hibernate", "time": "..."}`;
- `events/recommendations/rebalance`: 404 until EC2 recommends it, then `{"noticeTime": "..."}`.
Spot comes first so that when both are present the more urgent notice is the drain reason.

The first notice puts the host into draining and awaits `on_drain(notice)` once
(`enter_draining`, the same path an operator's `POST /drain` takes); the supervisor wires
that to an immediate heartbeat (IsDraining is news for the webserver) and a Sentry warning.
Polling goes on afterwards, because a rebalance recommendation may later be followed by an
interruption notice with a deadline: every new distinct notice is logged as a warning, but
draining is entered and `on_drain` called only once.

IMDS failures while polling are survived: the first one is logged at once, then at most one
summary per `error_log_interval` (a poll every 5 s would otherwise flood the log), and the
recovery is logged too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, NoReturn

import trio

from fractal_hostd.hoststate import DrainHook as DrainHook  # re-exported for the supervisor
from fractal_hostd.hoststate import DrainNotice, HostState
from fractal_hostd.metadata.imds import ImdsClient, ImdsError

logger = logging.getLogger(__name__)

SPOT_PATH = "spot/instance-action"
REBALANCE_PATH = "events/recommendations/rebalance"


async def enter_draining(state: HostState, notice: DrainNotice, on_drain: DrainHook | None) -> bool:
    """The one way into draining, for a metadata notice and an operator alike: the first call
    sets the state and awaits `on_drain(notice)`; later calls change nothing and return False."""
    entered = state.start_draining(notice)
    if entered and on_drain is not None:
        await on_drain(notice)
    return entered


class MalformedNotice(Exception):
    """IMDS answered 200 for a notice path, but not with the documented JSON."""


def parse_spot_notice(text: str, seen_at: dt.datetime) -> DrainNotice:
    body = _json_object(text, SPOT_PATH)
    action, time = body.get("action"), body.get("time")
    if not isinstance(action, str) or not isinstance(time, str):
        raise MalformedNotice(f"{SPOT_PATH} lacks string fields action and time")
    return DrainNotice(kind="spot", action=action, time=time, seen_at=seen_at)


def parse_rebalance_notice(text: str, seen_at: dt.datetime) -> DrainNotice:
    body = _json_object(text, REBALANCE_PATH)
    notice_time = body.get("noticeTime")
    if not isinstance(notice_time, str):
        raise MalformedNotice(f"{REBALANCE_PATH} lacks the string field noticeTime")
    return DrainNotice(kind="rebalance", action=None, time=notice_time, seen_at=seen_at)


def _json_object(text: str, path: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:
        raise MalformedNotice(f"{path} is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedNotice(f"{path} is not a JSON object")
    return body


_PARSERS = ((SPOT_PATH, parse_spot_notice), (REBALANCE_PATH, parse_rebalance_notice))


class _ErrorLog:
    """Logs the first failure of a streak, then one summary per `every` seconds, then recovery."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._streak = 0
        self._suppressed = 0
        self._next_log_at = 0.0

    def failure(self, exc: Exception) -> None:
        self._streak += 1
        now = trio.current_time()
        if self._streak == 1 or now >= self._next_log_at:
            more = f" ({self._suppressed} more failures not logged)" if self._suppressed else ""
            logger.warning("polling instance metadata failed: %s%s", exc, more)
            self._suppressed = 0
            self._next_log_at = now + self._every
        else:
            self._suppressed += 1

    def success(self) -> None:
        if self._streak:
            logger.info("polling instance metadata works again after %d failures", self._streak)
        self._streak = 0
        self._suppressed = 0


async def poll_once(client: ImdsClient) -> tuple[list[DrainNotice], list[Exception]]:
    """The notices IMDS shows now (spot first), and the errors met on the way. Each path is
    read on its own, so a failure on one does not hide a notice on the other."""
    notices: list[DrainNotice] = []
    errors: list[Exception] = []
    for path, parse in _PARSERS:
        try:
            text = await client.get(path)
            if text is not None:
                notices.append(parse(text, dt.datetime.now(dt.UTC)))
        except (ImdsError, MalformedNotice) as exc:
            errors.append(exc)
    return notices, errors


async def run_spot_poller(
    client: ImdsClient,
    state: HostState,
    *,
    interval: float,
    on_drain: DrainHook,
    error_log_interval: float = 60.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Poll forever (until cancelled). `on_drain` must not raise: an exception ends the task."""
    errors = _ErrorLog(error_log_interval)
    seen: set[tuple[str, str | None, str]] = set()
    task_status.started()
    while True:
        notices, failures = await poll_once(client)
        if failures:
            errors.failure(failures[0])
        else:
            errors.success()
        for notice in notices:
            key = (notice.kind, notice.action, notice.time)
            if key in seen:
                continue
            seen.add(key)
            entered = state.draining is None
            logger.warning(
                "EC2 %s notice: action=%s time=%s%s",
                notice.kind,
                notice.action,
                notice.time,
                "; draining" if entered else " (already draining)",
                extra={
                    "notice_kind": notice.kind,
                    "notice_action": notice.action,
                    "notice_time": notice.time,
                },
            )
            await enter_draining(state, notice, on_drain)
        await trio.sleep(interval)
