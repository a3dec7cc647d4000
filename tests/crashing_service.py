"""`python -m tests.crashing_service`: the real service, plus one child task that crashes.

The end-to-end tests run this as a subprocess to see a genuine crash inside the root nursery
(after start-up completed) go through the shutdown report. Nothing in the service knows about
it: the subclass only adds a child beside the real ones.
"""

from __future__ import annotations

import os
import signal
import sys

import trio

from fractal_hostd.config import Config
from fractal_hostd.process import early_signals
from fractal_hostd.process.logs import setup_logging
from fractal_hostd.supervisor import Service


class ChildCrashed(RuntimeError):
    pass


async def crash_soon() -> None:
    """Crash after FHD_TEST_CRASH_AFTER seconds, or at once on SIGUSR2."""
    with (
        trio.open_signal_receiver(signal.SIGUSR2) as crash_now,
        trio.move_on_after(float(os.environ.get("FHD_TEST_CRASH_AFTER", "0.2"))),
    ):
        async for _ in crash_now:
            break
    raise ChildCrashed("a child task failed on purpose (test)")


class ServiceWithCrashingChild(Service):
    async def _start_up(self, outer: trio.Nursery, inner: trio.Nursery, *args: object) -> None:
        await super()._start_up(outer, inner, *args)  # type: ignore[arg-type]
        inner.start_soon(crash_soon)


def main() -> int:
    early_signals.install()  # as the real entry point does
    config = Config.from_env(os.environ)
    setup_logging(fmt="json" if config.log_format == "json" else "console", level=config.log_level)
    try:
        return trio.run(ServiceWithCrashingChild(config).run)
    finally:
        early_signals.ignore()


if __name__ == "__main__":
    sys.exit(main())
