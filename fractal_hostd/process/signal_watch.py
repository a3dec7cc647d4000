"""The one place the running service handles signals (contract §7), for its whole life.

`SignalWatcher.run` is started by the supervisor beside everything else, with a receiver opened
before the first side effect and closed after the last; it first replays what `early_signals`
recorded before trio listened. What each signal does:

- SIGTERM, SIGINT, SIGQUIT: the first one stops the service (`on_stop`, a clean shutdown with
  its report, exit 0). Any further one, and any that arrives after a crash or fatal condition
  already started the shutdown path, is logged and changes nothing: one report, the exit code
  of the first cause. SIGQUIT is a stop like SIGTERM rather than Python's core dump: killing a
  root agent without its report and dying heartbeat is never what an operator wants.
- SIGHUP: logged; the service goes on. There is nothing to reload: every setting comes from
  the environment, flags and secret files read once at start (systemd re-reads
  EnvironmentFile= only on restart), so applying a change takes a restart.
- SIGUSR1: the tree of running trio tasks, each with the line it waits on, written to the log
  (one record): what to look at when the service or its shutdown seems stuck.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import trio

from fractal_hostd.process import early_signals

logger = logging.getLogger(__name__)

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


_TRIO_DIR = str(Path(trio.__file__).parent)


def _where(task: trio.lowlevel.Task) -> str:
    """The innermost awaiting frame outside trio itself: the line the task is waiting on."""
    frames = [(f, n) for f, n in task.iter_await_frames() if _TRIO_DIR not in f.f_code.co_filename]
    if not frames:
        return ""
    frame, lineno = frames[-1]
    return f" at {Path(frame.f_code.co_filename).name}:{lineno} in {frame.f_code.co_name}"


def task_tree_lines(task: trio.lowlevel.Task, depth: int = 0) -> Iterator[str]:
    """`task` and its descendants, one indented line each."""
    yield f"{'  ' * depth}{task.name}{_where(task)}"
    for nursery in task.child_nurseries:
        for child in sorted(nursery.child_tasks, key=lambda t: t.name):
            yield from task_tree_lines(child, depth + 1)


class SignalWatcher:
    def __init__(self, *, on_stop: Callable[[int], bool]) -> None:
        """`on_stop(signum)` starts the shutdown path; False when one already runs."""
        self._on_stop = on_stop

    async def run(self, signals: AsyncIterator[int]) -> None:
        for signum in early_signals.take_pending():
            self.handle(signum)
        async for signum in signals:
            self.handle(signum)

    def handle(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in STOP_SIGNALS:
            if self._on_stop(signum):
                logger.info("received %s: shutting down", name)
            else:
                logger.info("received %s while shutting down: ignored", name)
        elif signum == signal.SIGHUP:
            logger.info(
                "received SIGHUP: nothing to reload (configuration is read at start; "
                "restart to apply changes); the service goes on"
            )
        elif signum == signal.SIGUSR1:
            root = trio.lowlevel.current_root_task()
            tree = "\n".join(task_tree_lines(root)) if root is not None else "(none)"
            logger.info("received SIGUSR1: running tasks:\n%s", tree)
        else:
            logger.warning("received %s: not handled", name)
