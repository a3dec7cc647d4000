"""Signals before trio listens, and after it stops listening: recorded, never fatal.

The window this closes: between exec and `trio.open_signal_receiver`, the interpreter imports
trio, hypercorn, sentry-sdk, cryptography... (~0.3-1 s on a loaded host). With Python's
defaults a SIGTERM there kills the process with no report, a SIGINT raises KeyboardInterrupt
with a traceback, and SIGHUP/SIGUSR1/SIGQUIT kill it outright. Likewise after trio.run
returns (interpreter teardown, sentry-sdk's atexit hook) a late signal would turn exit 0 into
death by signal.

So the entry point calls `install()` first thing, before any heavy import: plain Python
handlers that only append the signal number to a list. The supervisor's signal watcher takes
that list (`take_pending`) when trio's receiver is open and handles those signals as if they had
just arrived. trio's receiver restores these handlers when it closes, so from then until the
process ends a signal is recorded and ignored: the shutdown path already runs. Once it has
run, `ignore()` sets SIG_IGN, which (unlike a Python handler) survives interpreter teardown.

This module imports nothing but `signal`: it must be cheap to import at the very top.

Alternatives rejected: blocking the signals with `pthread_sigmask` until trio is up (the mask
is inherited by every thread and child process started meanwhile, rclone included, and survives
exec); a C-level handler (no gain: Python runs its handlers between bytecodes of the main
thread, and the import phase is bytecode).
"""

from __future__ import annotations

import signal
from types import FrameType

# Every signal the service handles for its whole life (contract §7): stop, reload, task tree.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)

_pending: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def install() -> None:
    """Record HANDLED signals instead of dying from them. Main thread only."""
    for signum in HANDLED:
        signal.signal(signum, _record)


def ignore() -> None:
    """SIG_IGN for HANDLED signals: for the very end, once the shutdown path has run.

    Needed because the interpreter's finalisation resets every Python-level handler to SIG_DFL
    (CPython's `_PySignal_Fini`) — a SIGTERM in the last milliseconds would still be a death
    by signal — but leaves SIG_IGN alone.
    """
    for signum in HANDLED:
        signal.signal(signum, signal.SIG_IGN)


def take_pending() -> list[int]:
    """The signals recorded since the last call, oldest first."""
    taken = list(_pending)
    del _pending[: len(taken)]
    return taken
