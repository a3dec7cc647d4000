"""The request lines: written in batches while the app is served, at once otherwise."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from fractal_hostd.api.request_log import RequestLines, note_for_log, request_logger
from tests.api_fixtures import AUTH, make_api, running_api, tls_client

PORT = 40000


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == request_logger.name]


async def test_lines_wait_for_their_batch_and_keep_their_own_time(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    caplog.set_level(logging.INFO)
    lines = RequestLines(interval=0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lines.run)
        await trio.sleep(0.1)
        before = time.time()
        lines.add(logging.INFO, "PUT", "/a", 200, 0.001)
        after = time.time()
        await trio.sleep(0.3)
        lines.add(logging.INFO, "PUT", "/b", 200, 0.002)
        assert _lines(caplog) == []  # the batch is written 0.5 s after its first line
        await trio.sleep(0.3)
        assert _lines(caplog) == ["PUT /a 200 1.0 ms", "PUT /b 200 2.0 ms"]
        first = next(r for r in caplog.records if r.name == request_logger.name)
        assert before <= first.created <= after  # when it was answered, not when written
        lines.add(logging.INFO, "PUT", "/c", 200, 0.003)
        nursery.cancel_scope.cancel()  # serving ends: what waits is written
    assert _lines(caplog)[-1] == "PUT /c 200 3.0 ms"
    lines.add(logging.INFO, "PUT", "/d", 200, 0.004)  # and later lines at once
    assert _lines(caplog)[-1] == "PUT /d 200 4.0 ms"


def test_a_line_that_cannot_be_written_says_so_and_the_next_is_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    lines = RequestLines()
    note_for_log(name="a fact named like a LogRecord attribute")
    lines.add(logging.INFO, "PUT", "/bad", 200, 0.001)
    note_for_log()
    lines.add(logging.INFO, "PUT", "/good", 200, 0.001)
    assert [r.getMessage() for r in caplog.records][-2:] == [
        "a request's log line could not be written",
        "PUT /good 200 1.0 ms",
    ]


async def test_the_served_app_writes_its_lines_in_batches_and_all_of_them_at_its_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    api = make_api(tmp_path)
    api.app.request_lines = RequestLines(interval=600)  # no batch is due while the test runs
    await api.add_container(PORT)
    with trio.fail_after(30):
        async with running_api(tmp_path, api=api) as running, tls_client(running) as client:
            for dpi in (96, 120, 144):
                body = {"host_port": PORT, "dpi": dpi}
                answer = await client.put("/set_container_dpi", json=body, headers=AUTH)
                assert answer.status_code == 200
            assert _lines(caplog) == []  # waiting for their batch
        # Serving ended (its lifespan's end, after the drain): every line is written.
    assert [line[:26] for line in _lines(caplog)] == ["PUT /set_container_dpi 200"] * 3
    assert [r.dpi for r in caplog.records if r.name == request_logger.name] == [96, 120, 144]  # type: ignore[attr-defined]
