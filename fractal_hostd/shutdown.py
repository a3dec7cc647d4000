"""Why the service stops, and the one time-bounded report it makes about it (contract §7).

Every way of dying ends here exactly once: a signal, a crash of any child task, or a fatal
condition (metadata missing, handshake failed, Docker unreachable beyond its budget, ...).
`ShutdownCause.from_exception` turns what the root nursery raised into a cause, telling a
cancellation (not a crash) from a real error; `ShutdownReport.run` then reports the error to
Sentry, sends the dying heartbeat and flushes Sentry, all inside one shielded deadline so a
webserver or Sentry that never answers cannot hold the exit.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from fractal_hostd.exception_groups import leaves
from fractal_hostd.process.logs import NO_SENTRY_EVENT

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1


@dataclass(frozen=True)
class ShutdownCause:
    kind: str  # "signal", "crash" or "fatal"
    reason: str  # one line; becomes the dying heartbeat's ShutdownReason
    error: BaseException | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.kind == "signal" else EXIT_FAILURE

    @classmethod
    def from_signal(cls, signum: int) -> ShutdownCause:
        return cls("signal", f"received {signal.Signals(signum).name}")

    @classmethod
    def from_exception(
        cls, exc: BaseException, fatal_types: tuple[type[BaseException], ...] = ()
    ) -> ShutdownCause | None:
        """The cause behind `exc`, or None when it holds nothing but cancellations."""
        error = _without_cancellations(exc)
        if error is None:
            return None
        found = list(leaves(error))
        if len(found) == 1:
            error = found[0]
        if all(isinstance(leaf, fatal_types) for leaf in found):
            return cls("fatal", _one_line(found[0]), error)
        crash = next(leaf for leaf in found if not isinstance(leaf, fatal_types))
        return cls("crash", f"crash: {type(crash).__name__}: {_one_line(crash)}", error)


def _without_cancellations(exc: BaseException) -> BaseException | None:
    if isinstance(exc, trio.Cancelled):
        return None
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest
    return exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:500]


def _log_failed_step(step: str, exc: Exception) -> None:
    # A step's failure is told in the journal only: the Sentry flush may be what failed, and
    # the error being reported already is the event that matters.
    logger.error(
        "shutdown report: %s failed (%s); the other steps go on",
        step,
        type(exc).__name__,
        exc_info=exc,
        extra={NO_SENTRY_EVENT: True},
    )


def _isolated_sync(
    step: str, function: Callable[[BaseException], None], error: BaseException
) -> None:
    try:
        function(error)
    except Exception as exc:
        _log_failed_step(step, exc)


async def _isolated(step: str, work: Callable[..., Awaitable[None]], *args: object) -> None:
    """One step of the report: its failure is logged and cancels nothing else."""
    try:
        await work(*args)
    except Exception as exc:
        _log_failed_step(step, exc)


class ShutdownReport:
    """Steps 3-5 of contract §7, run once, bounded by `timeout` seconds in total.

    Each step is isolated: one that raises (a Sentry capture tripping over an odd exception, a
    dying heartbeat whose client broke, a flush failing) is logged, and the others still run;
    the exit code stays the cause's.

    The dying heartbeat and the Sentry flush run side by side: each gets the whole budget
    instead of a slice, and neither can starve the other when one peer is blackholed.
    """

    def __init__(
        self,
        *,
        timeout: float,
        capture_error: Callable[[BaseException], None],
        flush: Callable[[], Awaitable[None]],
    ) -> None:
        self._timeout = timeout
        self._capture_error = capture_error
        self._flush = flush
        self._send_dying: Callable[[str], Awaitable[None]] | None = None
        self._done = False

    def arm_dying_heartbeat(self, send_dying: Callable[[str], Awaitable[None]]) -> None:
        """Called once the handshake succeeded: from then on a death is told to the webserver."""
        self._send_dying = send_dying

    async def run(self, cause: ShutdownCause) -> None:
        if self._done:
            return
        self._done = True
        log = logger.info if cause.kind == "signal" else logger.error
        # The error itself goes to Sentry below, with its traceback: this line must not be a
        # second event.
        log(
            "shutting down: %s",
            cause.reason,
            # The traceback in the journal too, not only in Sentry (unless the error is the
            # operator's to fix and says how: `show_traceback = False`).
            exc_info=cause.error if getattr(cause.error, "show_traceback", True) else None,
            extra={"shutdown_kind": cause.kind, NO_SENTRY_EVENT: True},
        )
        with trio.move_on_after(self._timeout, shield=True) as budget:
            if cause.error is not None:
                _isolated_sync("the Sentry capture", self._capture_error, cause.error)
            async with trio.open_nursery() as nursery:
                if self._send_dying is not None:
                    nursery.start_soon(
                        _isolated, "the dying heartbeat", self._send_dying, cause.reason
                    )
                nursery.start_soon(_isolated, "the Sentry flush", self._flush)
        if budget.cancelled_caught:
            logger.warning(
                "shutdown report cut short after %.1f s (webserver or Sentry not answering)",
                self._timeout,
            )
