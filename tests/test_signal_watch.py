"""The signal watcher in-process: early replay, one stop, SIGHUP and SIGUSR1 (contract §7)."""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator

import pytest
import trio

from fractal_hostd.process import early_signals
from fractal_hostd.process.signal_watch import SignalWatcher, task_tree_lines


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fractal_hostd")


async def _signals(*signums: int) -> AsyncIterator[int]:
    for signum in signums:
        yield signum


class Stops:
    def __init__(self) -> None:
        self.asked: list[int] = []

    def __call__(self, signum: int) -> bool:
        self.asked.append(signum)
        return len(self.asked) == 1  # only the first starts the shutdown path


async def test_signals_recorded_before_trio_listened_are_handled_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    early_signals._record(signal.SIGTERM, None)
    stops = Stops()
    await SignalWatcher(on_stop=stops).run(_signals(signal.SIGINT))
    assert stops.asked == [signal.SIGTERM, signal.SIGINT]
    assert early_signals.take_pending() == []
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "received SIGTERM: shutting down",
        "received SIGINT while shutting down: ignored",
    ]


async def test_sigquit_stops_and_sighup_does_not(caplog: pytest.LogCaptureFixture) -> None:
    stops = Stops()
    await SignalWatcher(on_stop=stops).run(_signals(signal.SIGHUP, signal.SIGQUIT))
    assert stops.asked == [signal.SIGQUIT]
    assert "received SIGHUP: nothing to reload" in caplog.text


async def test_sigusr1_logs_the_task_tree(caplog: pytest.LogCaptureFixture) -> None:
    async def idle_child() -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(idle_child, name="idle-child")
        await trio.sleep(0)
        await SignalWatcher(on_stop=Stops()).run(_signals(signal.SIGUSR1))
        nursery.cancel_scope.cancel()
    tree = caplog.records[-1].getMessage()
    assert tree.startswith("received SIGUSR1: running tasks:")
    assert "idle-child at test_signal_watch.py:" in tree
    assert "in idle_child" in tree


async def test_task_tree_indents_children() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever, name="child")
        await trio.sleep(0)
        lines = list(task_tree_lines(trio.lowlevel.current_task()))
        nursery.cancel_scope.cancel()
    assert lines[1].startswith("  child")
