"""Tests that call setup_logging change process-wide state: this puts it back after each."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from fractal_hostd.process import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Autouse in every module that imports it: the root logger's handlers and level, the
    quietened libraries, hypercorn's access log, warnings capture and registered secrets."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    access_disabled = logging.getLogger("hypercorn.access").disabled
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)
    logging.getLogger("hypercorn.access").disabled = access_disabled
    logging.captureWarnings(False)
    logs.forget_registered_secrets()
