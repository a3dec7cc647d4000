"""The short seeded chaos runs CI makes (marker `chaos`), and proof that the checker catches.

Each run is the real service as a subprocess against the fakes; the real-engine run starts
its own private dockerd (root only). Kinds that find a defect of today's service are off by
default (plan.DEFAULT_DISABLED; docs/chaos.md names what each one finds).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
import trio

from tests.chaos import plan
from tests.chaos.driver import Driver, Options, Result

pytestmark = pytest.mark.chaos

SEED = 20261130


def options(engine: str = "fake", **kwargs: object) -> Options:
    return Options(seed=SEED, engine=engine, kinds=plan.enabled_kinds(engine), **kwargs)  # type: ignore[arg-type]


def explain(result: Result) -> str:
    return f"{result.violation}\n" + "\n".join(result.log[-40:])


async def test_short_run_on_the_fake_engine_violates_nothing() -> None:
    with trio.fail_after(150):
        result = await Driver(options(steps=100, fault_rate=0.25)).run()
    assert result.violation is None, explain(result)
    assert result.steps == 100
    assert sum(result.faults.values()) >= 15
    assert result.lifecycles >= 40


needs_root_and_dockerd = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("dockerd") is None,
    reason="the real-engine run starts a private dockerd: needs root and dockerd",
)


@needs_root_and_dockerd
async def test_short_run_on_a_private_real_dockerd_violates_nothing() -> None:
    with trio.fail_after(170):
        result = await Driver(options("real", steps=15, fault_rate=0.3)).run()
    assert result.violation is None, explain(result)
    assert result.lifecycles >= 5


@pytest.mark.parametrize(
    ("breakage", "caught"),
    [("duplicate_tty", "share tty"), ("stray_dir", "for no live managed container")],
)
async def test_a_broken_invariant_is_caught_with_seed_and_log(breakage: str, caught: str) -> None:
    with trio.fail_after(60):
        result = await Driver(
            options(steps=30, fault_rate=0.0, break_invariant=breakage, break_at=8, bound=2.0)
        ).run()
    assert result.violation is not None
    assert caught in result.violation
    assert result.steps == 8  # stops at the first violation
    assert any("BREAK" in line for line in result.log)


def _without_ids(log: list[str]) -> list[str]:
    return [re.sub(r"[0-9a-f]{12,64}", "<id>", line) for line in log]


async def test_the_same_seed_replays_the_same_operations() -> None:
    kinds = plan.enabled_kinds("fake")
    runs = []
    for _ in range(2):
        with trio.fail_after(60):
            runs.append(
                await Driver(
                    Options(seed=7, engine="fake", steps=15, kinds=kinds, fault_rate=0.3)
                ).run()
            )
    first, second = runs
    assert first.violation is None
    assert second.violation is None
    assert first.operations == second.operations
    assert first.faults == second.faults
    assert _without_ids(first.log) == _without_ids(second.log)
