"""The fake Docker engine with the faults a real dockerd cannot produce on demand.

Wraps tests/fakes/docker_engine.py (owned by the Docker area) by subclassing, adding:
- pause / unpause / stop / restart, with dockerd's view of a paused container (inspect says
  `Running: true, Paused: true`, the listing says `State: "paused"`);
- event delivery faults: events held back (a stall) and then delivered late, in order or
  shuffled (reordered), and events delivered twice (duplicated).
The random choices of a fault (the shuffle) come from the caller's seeded RNG, so a run
replays exactly.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from tests.fakes.docker_engine import FakeDockerEngine
from tests.fakes.docker_model import FakeContainer, HttpError


@dataclass
class ChaosContainer(FakeContainer):
    paused: bool = False
    starts: int = 0  # incarnation number: a TTY must stay while this stays

    def inspect(self) -> dict[str, Any]:
        document = super().inspect()
        if self.paused:
            document["State"].update(Status="paused", Paused=True)
        return document

    def summary(self) -> dict[str, Any]:
        document = super().summary()
        if self.paused:
            document["State"] = "paused"
            document["Status"] = "Up (Paused)"
        return document

    @property
    def listed_status(self) -> str:
        return "paused" if self.paused else self.status


class ChaosFakeEngine(FakeDockerEngine):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = False  # events are kept back (stall) until release()
        self.duplicate_remaining = 0  # the next N delivered events go out twice
        self._held: list[dict[str, Any]] = []

    # ---- container operations -----------------------------------------------------------------

    def _create(self, name: str, spec: dict[str, Any]) -> str:
        container_id = super()._create(name, spec)
        self.containers[container_id] = ChaosContainer(**vars(self.containers[container_id]))
        return container_id

    def _start(self, container: FakeContainer) -> None:
        super()._start(container)
        if isinstance(container, ChaosContainer):
            container.starts += 1

    def _die(self, container: FakeContainer, exit_code: int) -> None:
        if isinstance(container, ChaosContainer):
            container.paused = False
        super()._die(container, exit_code)

    def chaos(self, container_id: str) -> ChaosContainer:
        container = self._find(container_id)
        assert isinstance(container, ChaosContainer)
        return container

    def pause(self, container_id: str) -> None:
        container = self.chaos(container_id)
        if not container.running or container.paused:
            raise HttpError(409, f"Container {container.id} is not running or already paused")
        container.paused = True
        self._emit("pause", container)

    def unpause(self, container_id: str) -> None:
        container = self.chaos(container_id)
        if not container.paused:
            raise HttpError(409, f"Container {container.id} is not paused")
        container.paused = False
        self._emit("unpause", container)

    def stop(self, container_id: str) -> None:
        container = self.chaos(container_id)
        if not container.running:
            return  # dockerd answers 304
        self._emit("kill", container, {"signal": "15"})
        self._die(container, 143)
        self._emit("stop", container)

    def restart(self, container_id: str) -> None:
        container = self.chaos(container_id)
        self.stop(container.id)
        self._start(container)
        self._emit("restart", container)

    def _list(self, query: dict[str, str]) -> list[dict[str, Any]]:
        # The base filters on `status`, which stays "running" while paused: filter here.
        filters: dict[str, list[str]] = json.loads(query.get("filters", "{}"))
        wanted = filters.pop("status", None)
        rest = dict(
            query, filters=json.dumps(filters), all="1" if wanted else query.get("all", "0")
        )
        listed = super()._list(rest)
        if wanted is None:
            return listed
        return [s for s in listed if s["State"] in wanted]

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 3 and parts[0] == "containers":
            action = {"pause": self.pause, "unpause": self.unpause, "stop": self.stop}
            if parts[2] in action:
                action[parts[2]](parts[1])
                return 204, None
            if parts[2] == "restart":
                self.restart(parts[1])
                return 204, None
        return super()._route(method, path, query, body)

    # ---- event delivery faults --------------------------------------------------------------

    def _deliver(self, event: dict[str, Any]) -> None:
        if self.holding:  # a stall: delivered (maybe shuffled) by release()
            self._held.append(event)
            return
        self._deliver_now(event)

    def _deliver_now(self, event: dict[str, Any]) -> None:
        copies = 1
        if self.duplicate_remaining > 0:
            self.duplicate_remaining -= 1
            copies = 2
        for _ in range(copies):
            super()._deliver(event)

    def release(self, rng: random.Random | None = None) -> int:
        """End a stall: deliver what was held, shuffled with `rng` when given (reordered)."""
        held, self._held = self._held, []
        self.holding = False
        if rng is not None:
            rng.shuffle(held)
        for event in held:
            self._deliver(event)
        return len(held)
