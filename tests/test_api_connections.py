"""The API's connection gate and the memory trim after a flood (pure logic, virtual time)."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import trio
from prometheus_client import CollectorRegistry

from fractal_hostd.api.connections import (
    TRIM_AFTER_PEAK,
    TRIM_SETTLE_SECONDS,
    TRIM_WHEN_AT_MOST,
    ConnectionGate,
    MemoryTrimmer,
)


def test_the_gate_admits_up_to_its_limit_and_counts_refusals() -> None:
    registry = CollectorRegistry()
    gate = ConnectionGate(2, registry)
    assert [gate.admit() for _ in range(4)] == [True, True, False, False]
    gate.release()
    assert gate.admit()
    assert gate.refused == 2
    assert registry.get_sample_value("fractal_hostd_api_connections_refused_total") == 2
    assert registry.get_sample_value("fractal_hostd_api_connections_open") == 2


def test_a_limit_below_one_is_a_bug() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionGate(0)


class _Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_memory_is_collected_and_trimmed_once_a_flood_has_gone(
    autojump_clock: trio.abc.Clock,
) -> None:
    trims: list[int] = []
    trimmed = threading.Event()

    def malloc_trim(pad: int) -> int:  # runs in a worker thread, like the real one
        trims.append(pad)
        trimmed.set()
        return 1

    gate = ConnectionGate(1000)
    trimmer = MemoryTrimmer(gate, malloc_trim=malloc_trim)
    # Garbage that only a full collection frees: a cycle that lived long enough to reach the
    # oldest generation (as a connection's objects do), then died. Automatic collection is
    # off so that only the trimmer's own collection can free it.
    gc.disable()
    garbage = _Cycle()
    collected = weakref.ref(garbage)
    gc.collect(1)
    gc.collect(1)
    del garbage
    try:
        await _flood_and_calm(gate, trimmer, trims, trimmed)
    finally:
        gc.enable()
    assert collected() is None  # a full collection ran before the trim


async def _flood_and_calm(
    gate: ConnectionGate, trimmer: MemoryTrimmer, trims: list[int], trimmed: threading.Event
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trimmer.run)
        for _ in range(TRIM_AFTER_PEAK):
            assert gate.admit()
        for _ in range(TRIM_AFTER_PEAK - TRIM_WHEN_AT_MOST - 1):
            gate.release()
        await trio.sleep(10 * TRIM_SETTLE_SECONDS)
        assert trims == []  # still busy
        gate.release()  # down to the webserver's few connections
        await trio.sleep(TRIM_SETTLE_SECONDS / 2)
        assert trims == []  # the burst of closes settles first
        await trio.sleep(TRIM_SETTLE_SECONDS)
        assert await trio.to_thread.run_sync(trimmed.wait, 10)
        assert trims == [0]
        # A few connections coming and going is no flood: no more trims.
        for _ in range(5):
            gate.admit()
            gate.release()
        await trio.sleep(10 * TRIM_SETTLE_SECONDS)
        assert trims == [0]
        nursery.cancel_scope.cancel()
