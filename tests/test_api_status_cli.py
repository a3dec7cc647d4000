"""`fractal-hostd status` (status_main) against a real API over TLS on loopback port 0.

The CLI is synchronous (httpx.Client), so it runs in a worker thread while trio serves.
Test rules: localhost only, port 0, an absolute `trio.fail_after` around every I/O test.
"""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import pytest
import trio

from fractal_hostd.status_cli import format_status, status_main
from tests.api_fixtures import SECRET, cli_against_api, make_api, running_api

TIMEOUT = 10


async def test_prints_the_status_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api = make_api(tmp_path)
    record = await api.add_container(40000)
    record.dpi, record.ready, record.cloud_storage = 96, True, ["dropbox"]
    await api.add_container(40001)
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path, api=api) as running:
            code = await trio.to_thread.run_sync(
                functools.partial(status_main, url=running.url, secret=SECRET)
            )
            wrong = await trio.to_thread.run_sync(
                functools.partial(status_main, url=running.url, secret="wrong")
            )
    out, err = capsys.readouterr()
    assert code == 0
    assert "fractal-hostd 9.9.9 (localdev)" in out
    assert "draining:       no" in out
    assert "ready:          NO: startup, docker, reconcile" in out
    assert "containers:     2" in out
    table = [line.split() for line in out.splitlines() if line.startswith(record.id[:12])]
    assert table == [[record.id[:12], "40000", "10", "96", "yes", "dropbox"]]
    assert wrong == 1
    assert "refused the secret" in err
    assert SECRET not in out + err


def test_unreachable_api_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: connection refused.
    assert status_main(url=f"https://127.0.0.1:{port}", secret=SECRET) == 1
    err = capsys.readouterr().err
    assert err.startswith("fractal-hostd status: fractal-hostd is not running")
    assert len(err.strip().splitlines()) == 1


def test_a_stopped_service_is_named_with_how_to_start_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A stopped service has removed its private directory: no secret and nothing listening.
    assert status_main(url="https://127.0.0.1:1", secret="") == 1
    err = capsys.readouterr().err
    assert err.startswith("fractal-hostd status: fractal-hostd is not running")
    assert "systemctl start fractal-hostd" in err
    assert "secret" not in err
    assert len(err.strip().splitlines()) == 1


async def test_missing_secret_of_a_running_service_is_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli_against_api(tmp_path, status_main, TIMEOUT, secret="")
    assert code == 1
    assert "no API secret found" in capsys.readouterr().err


def test_format_shows_draining_heartbeat_and_tolerates_gaps() -> None:
    text = format_status(
        {
            "version": "1",
            "environment": "prod",
            "draining": {"kind": "spot", "action": "terminate", "time": "T"},
            "last_heartbeat": {"number": 4, "sent_at": "S", "ok": False, "dying": True},
            "containers": [{"id": "ab", "host_port": 1, "tty": None}],
        }
    )
    assert "draining:       YES: spot terminate at T" in text
    assert "last heartbeat: #4 at S, FAILED (dying)" in text
    assert "docker:         NOT connected" in text
    assert "ab         1          -    -    no     -" in text
