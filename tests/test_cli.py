"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fractal_hostd.cli import main

REPO = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FRACTAL_", "SENTRY_", "APP_ENV", "USE_PROD_SENTRY", "DOCKER_HOST"))
    }
    env.update(extra)
    return env


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fractal_hostd", *args],
        env=clean_env(**env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_error_exits_2_with_one_line() -> None:
    result = run_cli("run", FRACTAL_HEARTBEAT_INTERVAL="soon")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "FRACTAL_HEARTBEAT_INTERVAL" in lines[0]
    assert "'soon'" in lines[0]
    assert "Traceback" not in result.stderr


def test_flag_is_validated_like_its_variable() -> None:
    result = run_cli("run", "--app-env", "moon")
    assert result.returncode == 2
    assert "APP_ENV='moon'" in result.stderr


def test_missing_secret_outside_localdev_exits_2() -> None:
    result = run_cli("run", APP_ENV="production")
    assert result.returncode == 2
    assert "FRACTAL_WEBSERVER_AUTH_SECRET" in result.stderr


def test_secret_value_never_echoed_in_errors(tmp_path: Path) -> None:
    result = run_cli(
        "run",
        APP_ENV="prod",
        FRACTAL_WEBSERVER_AUTH_SECRET="hunter2-topsecret",
        FRACTAL_LOG_LEVEL="chatty",
    )
    assert result.returncode == 2
    assert "hunter2-topsecret" not in result.stderr + result.stdout


def test_dsn_sentry_sdk_rejects_exits_2_with_one_line(tmp_path: Path) -> None:
    """It used to pass the config check and crash start-up with a traceback (exit 1)."""
    done = run_cli(
        "run",
        SENTRY_DSN="https://sekrit-key@sentry.example/notanumber",
        USE_PROD_SENTRY="1",
        FRACTAL_ROOT=str(tmp_path / "root"),
        FRACTAL_PRIVATE_DIR=str(tmp_path / "private"),
        DOCKER_HOST=f"unix://{tmp_path}/missing.sock",
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "SENTRY_DSN" in lines[0]
    assert "sekrit-key" not in done.stderr


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert "fractal-hostd" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--heartbeat-interval" in out
    assert "FRACTAL_HEARTBEAT_INTERVAL" in out


def run_check(tmp_path: Path, docker_socket: Path) -> subprocess.CompletedProcess[str]:
    """`fractal-hostd check` against the Docker at `docker_socket`, its directories in
    tmp_path."""
    return run_cli(
        "check",
        DOCKER_HOST=f"unix://{docker_socket}",
        FRACTAL_ROOT=str(tmp_path / "root"),
        FRACTAL_PRIVATE_DIR=str(tmp_path / "private"),
    )


def test_check_reports_unreachable_docker_and_exits_1(tmp_path: Path) -> None:
    result = run_check(tmp_path, docker_socket=tmp_path / "no-docker.sock")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  docker" in result.stdout
    assert "no-docker.sock" in result.stdout
    assert "Traceback" not in result.stderr


def test_check_on_a_ready_host_exits_0(tmp_path: Path, docker_socket: Path) -> None:
    result = run_check(tmp_path, docker_socket=docker_socket)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK    docker" in result.stdout
    assert "ready" in result.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
    reason="needs root and setpriv to run the service as another user",
)
def test_refuses_to_run_as_non_root_outside_localdev() -> None:
    result = subprocess.run(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "fractal_hostd",
            "run",
        ],
        env=clean_env(APP_ENV="prod", FRACTAL_WEBSERVER_AUTH_SECRET="not-logged-secret"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "requires root" in result.stderr
    assert "not-logged-secret" not in result.stderr


def test_run_imports_without_the_collector_and_turns_it_back_on_before_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run` pauses the cyclic collector for its imports; the service itself always runs
    with it on, and what the imports left is frozen out of its passes."""
    import gc

    from fractal_hostd import cli, supervisor
    from fractal_hostd.config import Config
    from fractal_hostd.process import early_signals, instance_lock

    seen: list[tuple[str, bool, int]] = []
    pause = cli.pause_collector_for_imports

    def recording_pause() -> None:
        pause()
        seen.append(("paused", gc.isenabled(), gc.get_freeze_count()))

    def fake_service(config: Config) -> int:
        seen.append(("service", gc.isenabled(), gc.get_freeze_count()))
        return 0

    # This test process keeps its own signal handling.
    monkeypatch.setattr(early_signals, "install", lambda: None)
    monkeypatch.setattr(early_signals, "ignore", lambda: None)
    monkeypatch.setattr(cli, "pause_collector_for_imports", recording_pause)
    monkeypatch.setattr(instance_lock, "acquire", lambda root, private_dir: None)
    monkeypatch.setattr(supervisor, "run_service", fake_service)
    monkeypatch.setattr(sys, "argv", ["fractal-hostd", "run"])
    monkeypatch.setenv("APP_ENV", "localdev")
    frozen_before = gc.get_freeze_count()
    try:
        assert cli.main() == 0
    finally:
        gc.enable()
        gc.unfreeze()
    assert [(step, enabled) for step, enabled, _ in seen] == [
        ("paused", False),
        ("service", True),
    ]
    assert seen[1][2] > frozen_before
