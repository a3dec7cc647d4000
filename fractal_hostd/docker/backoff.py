"""Capped exponential backoff with full jitter, for reconnecting to dockerd.

Full jitter (a uniform draw in [0, current cap]) spreads reconnect attempts so that several
waiters (or several hosts after a fleet-wide dockerd upgrade) do not retry in lock step.
The floor keeps a retry loop from spinning when the draw is close to 0.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        *,
        initial: float = 0.1,
        cap: float = 5.0,
        factor: float = 2.0,
        floor: float = 0.05,
        rng: random.Random | None = None,
    ) -> None:
        self._initial = initial
        self._cap = cap
        self._factor = factor
        self._floor = floor
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self._current = initial

    def next_delay(self) -> float:
        """Delay before the next attempt; each call widens the window up to the cap."""
        delay = max(self._floor, self._rng.uniform(0.0, self._current))
        self._current = min(self._cap, self._current * self._factor)
        return delay

    def reset(self) -> None:
        self._current = self._initial


def jittered(interval: float, jitter: float, rng: random.Random | None = None) -> float:
    """`interval` moved uniformly by up to ±`jitter` (never below 0)."""
    return max(0.0, interval + (rng or random).uniform(-jitter, jitter))
