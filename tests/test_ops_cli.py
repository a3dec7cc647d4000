"""`fractal-hostd drain` and the --help of every command (issue 13 items 2 and 6).

drain_main is synchronous (httpx.Client), so it runs in a worker thread while trio serves the
real API over TLS on loopback port 0; an absolute `trio.fail_after` bounds each I/O test.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import trio

from fractal_hostd import cli
from fractal_hostd.config import Config
from fractal_hostd.status_cli import drain_main, format_status
from tests.api_fixtures import SECRET, cli_against_api, make_api, running_api

TIMEOUT = 10


async def test_drain_command_drains_once_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = make_api(tmp_path)
    with trio.fail_after(TIMEOUT):
        async with running_api(tmp_path, api=api) as running:
            first = await trio.to_thread.run_sync(
                functools.partial(drain_main, url=running.url, secret=SECRET, reason="disk swap")
            )
            again = await trio.to_thread.run_sync(
                functools.partial(drain_main, url=running.url, secret=SECRET, reason=None)
            )
            wrong = await trio.to_thread.run_sync(
                functools.partial(drain_main, url=running.url, secret="nope", reason=None)
            )
    out, err = capsys.readouterr()
    assert (first, again, wrong) == (0, 0, 1)
    lines = out.splitlines()
    assert lines[0].startswith("host is draining: YES: operator (disk swap) since ")
    assert lines[1].startswith("host is draining (it already was): YES: operator (disk swap)")
    assert err.startswith("fractal-hostd drain: the API at ")
    assert api.state.draining is not None
    assert api.state.draining.reason == "disk swap"


async def test_drain_command_reports_a_refused_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await cli_against_api(tmp_path, drain_main, TIMEOUT, secret=SECRET, reason="x" * 501)
    assert code == 1
    err = capsys.readouterr().err
    assert "HTTP 400: reason must be a string of at most 500 characters" in err


def test_drain_on_a_stopped_service_says_how_to_start_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert drain_main(url="https://127.0.0.1:1", secret=SECRET, reason=None) == 1
    err = capsys.readouterr().err
    assert "not running" in err
    assert "systemctl start fractal-hostd" in err


def test_status_report_shows_an_operator_drain() -> None:
    text = format_status(
        {
            "draining": {
                "kind": "operator",
                "reason": "kernel",
                "seen_at": "2026-11-30T10:00:00+00:00",
            }
        }
    )
    assert "draining:       YES: operator (kernel) since 2026-11-30T10:00:00+00:00" in text


@pytest.mark.parametrize("command", ["run", "check", "status", "drain"])
def test_every_flag_help_shows_its_default_and_variable(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    # argparse wraps lines; the usage line lists the flags too: read the options part only.
    out = " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]
    flags = [(flag, variable) for flag, variable, _ in cli._FLAGS]
    if command in ("status", "drain"):
        flags = [(f, v) for f, v in flags if f in cli._LOCATOR_FLAGS]
    for flag, variable in flags:
        section = out.split(f"{flag} VALUE", 1)[1].split(" --", 1)[0]
        assert "(default: " in section, flag
        assert f"[env {variable}]" in section, flag


def test_help_defaults_match_the_configuration() -> None:
    config = Config.from_env({}, {})
    fixed = {
        "APP_ENV": config.app_env.value,
        "FRACTAL_ROOT": str(config.root),
        "FRACTAL_PRIVATE_DIR": str(config.private_dir),
        "DOCKER_HOST": f"unix://{config.docker_socket}",
        "FRACTAL_HEARTBEAT_INTERVAL": f"{config.heartbeat_interval:g}",
        "FRACTAL_HEARTBEAT_JITTER": f"{config.heartbeat_jitter:g}",
        "FRACTAL_SPOT_POLL_INTERVAL": f"{config.spot_poll_interval:g}",
        "FRACTAL_DOCKER_UNREACHABLE_BUDGET": f"{config.docker_unreachable_budget:g}",
        "FRACTAL_HANDSHAKE_TIMEOUT": f"{config.handshake_timeout:g}",
        "FRACTAL_CONTAINER_WAIT": f"{config.container_wait:g}",
        "FRACTAL_ECS_AGENT_IMAGE": config.ecs_agent_image,
        "FRACTAL_SHUTDOWN_REPORT_TIMEOUT": f"{config.shutdown_report_timeout:g}",
        "FRACTAL_LOG_LEVEL": config.log_level,
    }
    for variable, value in fixed.items():
        assert cli._DEFAULTS[variable] == value, variable
    assert f"{config.api_host}:{config.api_port}" in cli._DEFAULTS["FRACTAL_API_BIND"]


def test_status_report_shows_the_last_error() -> None:
    text = format_status(
        {"recent_errors": [{"at": "T1", "message": "old"}, {"at": "T2", "message": "disk full"}]}
    )
    assert "recent errors:  2, last at T2: disk full" in text
    assert "recent errors" not in format_status({"recent_errors": []})


def test_every_failed_check_carries_its_remedy(tmp_path: Path) -> None:
    import io
    import socket

    from fractal_hostd import checks

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config.from_env(
            {
                "APP_ENV": "localdev",
                "FRACTAL_ROOT": str(not_a_dir / "root"),
                "FRACTAL_PRIVATE_DIR": str(tmp_path / "private"),
                "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
                "FRACTAL_API_BIND": f"127.0.0.1:{port}",
            },
            {},
        )
        results = [
            checks.check_root(Config.from_env({"APP_ENV": "prod", **_PROD}, {}), euid=1000),
            checks.check_writable_dir("root dir", config.root),
            checks.check_api_port(config),
            trio.run(checks.check_docker, config.docker_socket),
            *checks.check_cloud_storage(),
        ]
    failing = [r for r in results if r.status != "ok"]
    assert {r.name for r in failing} >= {"root", "root dir", "api port", "docker"}
    for result in failing:
        assert result.remedy, result.name
    api_port = next(r for r in failing if r.name == "api port")
    assert f"held by pid {os.getpid()}" in api_port.detail
    assert "FRACTAL_API_BIND" in api_port.remedy
    out = io.StringIO()
    checks.print_report(results, out)
    lines = out.getvalue().splitlines()
    for index, line in enumerate(lines):
        if line.startswith(("FAIL", "WARN")):
            assert lines[index + 1].lstrip().startswith("→ "), line


_PROD = {"FRACTAL_WEBSERVER_AUTH_SECRET": "a-secret-of-sufficient-length-123"}
