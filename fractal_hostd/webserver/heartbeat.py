"""The heartbeat child task: numbering, schedule, and the dying heartbeat (contract §4).

Numbering: every heartbeat *attempt* takes the next number, starting at 0, whether it then
succeeds or not (the webserver cannot know whether a failed one arrived, so a number is never
reused). The dying heartbeat takes the next number too, except when start-up never completed
(contract §4): then it is 0. Heartbeat 0 is start-up's last step, so "completed" means a
heartbeat attempt ran to its end (answered or failed); one cut by the shutdown while in flight
(a signal during heartbeat 0) does not count, and the dying heartbeat is 0.

"No heartbeat ever follows a dying one": all sends go through one lock, and the dying send
marks this object dead while holding it, before it touches the network. A regular or
draining heartbeat that was waiting for the lock then finds the dead flag and sends nothing.

Schedule: heartbeat 0 goes out as soon as run() starts (it tells the webserver the host is
ready, so run() reports started only after it was attempted); afterwards each heartbeat is
due `interval ± uniform(jitter)` seconds after the previous regular one started, so hosts
started together drift apart. Extra heartbeats (send_now, for draining) do not move the
schedule.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import trio

from fractal_hostd.hoststate import HeartbeatRecord, HostState, InstanceMetadata
from fractal_hostd.process.meminfo import PROC_MEMINFO, MemInfo, read_meminfo
from fractal_hostd.webserver.client import HeartbeatPayload, WebserverClient

logger = logging.getLogger(__name__)


def rfc3339_utc(moment: dt.datetime) -> str:
    """`2026-11-25T12:00:00.123456Z`: UTC, microseconds, `Z` suffix."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Heartbeats:
    def __init__(
        self,
        client: WebserverClient,
        auth_token: str,
        metadata: InstanceMetadata,
        state: HostState,
        *,
        num_containers: Callable[[], int],
        rng: random.Random | None = None,
        meminfo_path: Path = PROC_MEMINFO,
        on_result: Callable[[bool], None] | None = None,
        now: Callable[[], dt.datetime] = _utc_now,
    ) -> None:
        self._client = client
        self._auth_token = auth_token
        self._metadata = metadata
        self._state = state
        self._num_containers = num_containers
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not cryptography
        self._meminfo_path = meminfo_path
        self._on_result = on_result
        self._now = now
        self._lock = trio.Lock()
        self._next_number = 0
        self._dead = False
        self._one_completed = False  # a heartbeat attempt ran to its end: start-up completed

    @property
    def next_number(self) -> int:
        return self._next_number

    @property
    def dead(self) -> bool:
        """True once the dying heartbeat was started: nothing is sent any more."""
        return self._dead

    async def run(
        self,
        *,
        interval: float,
        jitter: float,
        task_status: trio.TaskStatus[bool] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Send heartbeat 0 now, report started(ok of heartbeat 0), then keep the schedule."""
        if interval <= 0 or not 0 <= jitter < interval:
            raise ValueError(
                f"need interval > 0 and 0 <= jitter < interval, got {interval}, {jitter}"
            )
        last_start = trio.current_time()
        ok = await self._send()
        task_status.started(ok)
        while not self._dead:
            await trio.sleep_until(last_start + interval + self._rng.uniform(-jitter, jitter))
            last_start = trio.current_time()
            await self._send()
        await trio.sleep_forever()  # dead: the supervisor cancels us on its way out

    async def send_now(self) -> bool:
        """An extra heartbeat at once (e.g. draining began, so IsDraining is news)."""
        return await self._send()

    async def send_dying(self, reason: str) -> None:
        """The last heartbeat, with ShutdownReason; does nothing when one was already sent.
        Bound it from outside (shutdown budget). The outcome is in state.last_heartbeat."""
        await self._send(dying_reason=reason)

    async def _send(self, *, dying_reason: str | None = None) -> bool:
        async with self._lock:
            if self._dead:
                return False
            number = self._next_number
            if dying_reason is not None:
                self._dead = True
                if not self._one_completed:
                    number = 0
            self._next_number = number + 1
            sent_at = self._now()
            payload = self._payload(number, sent_at, dying_reason)
            started = trio.current_time()
            ok = await self._client.send_heartbeat(payload)
            self._one_completed = True
            self._state.last_heartbeat = HeartbeatRecord(
                number=number,
                sent_at=sent_at,
                ok=ok,
                dying=dying_reason is not None,
                round_trip_seconds=trio.current_time() - started,
            )
            if self._on_result is not None:
                self._on_result(ok)
            return ok

    def _payload(
        self, number: int, sent_at: dt.datetime, dying_reason: str | None
    ) -> HeartbeatPayload:
        memory = self._memory()
        payload: HeartbeatPayload = {
            "AuthToken": self._auth_token,
            "Timestamp": rfc3339_utc(sent_at),
            "HeartbeatNumber": number,
            "InstanceID": self._metadata.instance_id,
            "InstanceType": self._metadata.instance_type,
            "TotalRAMinKB": memory.total_kb,
            "FreeRAMinKB": memory.free_kb,
            "AvailRAMinKB": memory.available_kb,
            "IsDyingHeartbeat": dying_reason is not None,
            "IsDraining": self._state.draining is not None,
            "NumContainers": self._num_containers(),
        }
        if dying_reason is not None:
            payload["ShutdownReason"] = dying_reason
        return payload

    def _memory(self) -> MemInfo:
        # A heartbeat is first of all a sign of life: unreadable memory figures must not stop it.
        try:
            return read_meminfo(self._meminfo_path)
        except (OSError, ValueError) as exc:
            logger.error("cannot read memory figures for the heartbeat: %s", exc)
            return MemInfo(total_kb=0, free_kb=0, available_kb=0)
