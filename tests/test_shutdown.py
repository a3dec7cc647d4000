"""ShutdownCause classification and the bounded ShutdownReport (virtual time)."""

from __future__ import annotations

import signal

import pytest
import trio

from fractal_hostd.shutdown import ShutdownCause, ShutdownReport


class Fatal(Exception):
    pass


def test_signal_cause_exits_zero() -> None:
    cause = ShutdownCause.from_signal(signal.SIGTERM)
    assert (cause.kind, cause.reason, cause.exit_code, cause.error) == (
        "signal",
        "received SIGTERM",
        0,
        None,
    )


async def _cancelled_group() -> BaseException:
    """A real trio cancellation as it leaves a nursery, caught before its scope absorbs it."""
    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(trio.sleep_forever)
                scope.cancel()
        except BaseException as exc:
            caught.append(exc)
            raise
    return caught[0]


async def test_cancellation_is_not_a_crash() -> None:
    exc = await _cancelled_group()
    assert ShutdownCause.from_exception(exc) is None
    assert ShutdownCause.from_exception(trio.Cancelled._create()) is None


def test_single_crash_in_nested_groups_is_unwrapped() -> None:
    error = ValueError("boom")
    group = BaseExceptionGroup("outer", [BaseExceptionGroup("inner", [error])])
    cause = ShutdownCause.from_exception(group)
    assert cause is not None
    assert cause.kind == "crash"
    assert cause.error is error
    assert cause.reason == "crash: ValueError: boom"
    assert cause.exit_code == 1


def test_crash_beside_cancellations_keeps_only_the_crash() -> None:
    error = RuntimeError("child died")
    group = BaseExceptionGroup("g", [trio.Cancelled._create(), error])
    cause = ShutdownCause.from_exception(group)
    assert cause is not None
    assert cause.error is error


def test_fatal_condition() -> None:
    cause = ShutdownCause.from_exception(ExceptionGroup("g", [Fatal("no token in 60 s")]), (Fatal,))
    assert cause is not None
    assert (cause.kind, cause.reason, cause.exit_code) == ("fatal", "no token in 60 s", 1)


def test_crash_wins_over_fatal_in_the_reason() -> None:
    group = ExceptionGroup("g", [Fatal("f"), KeyError("k")])
    cause = ShutdownCause.from_exception(group, (Fatal,))
    assert cause is not None
    assert cause.kind == "crash"
    assert "KeyError" in cause.reason
    assert cause.error is not None


def test_reason_is_one_bounded_line() -> None:
    cause = ShutdownCause.from_exception(ValueError("a\nb" + "x" * 2000))
    assert cause is not None
    assert "\n" not in cause.reason
    assert len(cause.reason) < 600


class Recorder:
    def __init__(self, *, dying_delay: float = 0.0, flush_delay: float = 0.0) -> None:
        self.captured: list[BaseException] = []
        self.dying: list[str] = []
        self.flushed = 0
        self.dying_delay = dying_delay
        self.flush_delay = flush_delay

    def capture(self, exc: BaseException) -> None:
        self.captured.append(exc)

    async def send_dying(self, reason: str) -> None:
        await trio.sleep(self.dying_delay)
        self.dying.append(reason)

    async def flush(self) -> None:
        await trio.sleep(self.flush_delay)
        self.flushed += 1

    def report(self, timeout: float = 5.0) -> ShutdownReport:
        return ShutdownReport(timeout=timeout, capture_error=self.capture, flush=self.flush)


async def test_report_after_signal_sends_no_error_but_dying_heartbeat() -> None:
    rec = Recorder()
    report = rec.report()
    report.arm_dying_heartbeat(rec.send_dying)
    await report.run(ShutdownCause.from_signal(signal.SIGINT))
    assert rec.captured == []
    assert rec.dying == ["received SIGINT"]
    assert rec.flushed == 1


async def test_report_without_handshake_sends_no_dying_heartbeat() -> None:
    rec = Recorder()
    error = RuntimeError("x")
    await rec.report().run(ShutdownCause("crash", "crash: RuntimeError: x", error))
    assert rec.captured == [error]
    assert rec.dying == []
    assert rec.flushed == 1


async def test_report_runs_once() -> None:
    rec = Recorder()
    report = rec.report()
    report.arm_dying_heartbeat(rec.send_dying)
    cause = ShutdownCause.from_signal(signal.SIGTERM)
    await report.run(cause)
    await report.run(cause)
    assert len(rec.dying) == 1


@pytest.mark.parametrize(("dying_delay", "flush_delay"), [(1e9, 0.0), (0.0, 1e9), (1e9, 1e9)])
async def test_report_is_bounded_when_peers_never_answer(
    autojump_clock: trio.testing.MockClock, dying_delay: float, flush_delay: float
) -> None:
    rec = Recorder(dying_delay=dying_delay, flush_delay=flush_delay)
    report = rec.report(timeout=5.0)
    report.arm_dying_heartbeat(rec.send_dying)
    start = trio.current_time()
    await report.run(ShutdownCause.from_signal(signal.SIGTERM))
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_report_completes_even_when_its_caller_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = Recorder(dying_delay=1.0)
    report = rec.report()
    report.arm_dying_heartbeat(rec.send_dying)
    with trio.CancelScope() as scope:
        scope.cancel()
        await report.run(ShutdownCause.from_signal(signal.SIGTERM))
    assert rec.dying == ["received SIGTERM"]


class Broken(Exception):
    pass


@pytest.mark.parametrize("failing", ["capture", "dying", "flush"])
async def test_a_failing_step_is_logged_and_the_others_still_run(
    failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()

    def capture(exc: BaseException) -> None:
        if failing == "capture":
            raise Broken("capture broke")
        rec.capture(exc)

    async def send_dying(reason: str) -> None:
        if failing == "dying":
            raise Broken("dying heartbeat broke")
        await rec.send_dying(reason)

    async def flush() -> None:
        if failing == "flush":
            raise Broken("flush broke")
        await rec.flush()

    report = ShutdownReport(timeout=5.0, capture_error=capture, flush=flush)
    report.arm_dying_heartbeat(send_dying)
    error = RuntimeError("the crash")
    cause = ShutdownCause("crash", "crash: RuntimeError: the crash", error)
    await report.run(cause)  # does not raise

    assert rec.captured == ([] if failing == "capture" else [error])
    assert rec.dying == ([] if failing == "dying" else [cause.reason])
    assert rec.flushed == (0 if failing == "flush" else 1)
    assert cause.exit_code == 1
    failures = [r for r in caplog.records if "shutdown report:" in r.getMessage()]
    assert len(failures) == 1
    assert "failed (Broken)" in failures[0].getMessage()
    assert failures[0].exc_info is not None
