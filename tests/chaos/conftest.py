"""The `chaos` marker: the short seeded runs of the chaos driver (included by default;
`-m "not chaos"` leaves them out)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: a seeded run of the chaos driver (tests/chaos)")
