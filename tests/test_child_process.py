"""Child processes: allow-listed environment (no secret reaches a child) and bounds that hold.

The children are the recording fakes of rclone and the unmount tools (tests/fakes/fake_rclone.py),
which log their whole environment; every I/O test runs under an absolute `trio.fail_after`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from fractal_hostd.cloud_storage import check as cloud_storage_check
from fractal_hostd.cloud_storage.fuse_unmount import lazy_unmount
from fractal_hostd.process import child_process, telemetry
from fractal_hostd.process.child_process import ALLOWED_NAMES, child_environment, run_child
from tests.cloud_storage_fixtures import LIMIT, PORT, FakeTools, mount

# What the service's own environment can hold under systemd: none of it may reach a child.
SERVICE_SECRETS = {
    "FRACTAL_WEBSERVER_AUTH_SECRET": "auth-secret-Xq93Lm",
    "SENTRY_DSN": "https://public-key-Kd72@o1.ingest.sentry.io/42",
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "WATCHDOG_USEC": "30000000",
    "FRACTAL_SOMETHING_NEW": "value-Pz61",
    "RCLONE_CONFIG": "/etc/elsewhere.conf",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-Rt55",
}


@pytest.fixture
def service_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SERVICE_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")


# The fakes are started through `sh` wrappers, which set these themselves.
SET_BY_THE_SHELL = {"PWD", "SHLVL", "_"}


def assert_allow_listed(env: dict[str, str]) -> None:
    for name, value in env.items():
        if name in SET_BY_THE_SHELL:
            continue
        assert name in ALLOWED_NAMES | {"HOME"} or name.startswith("LC_"), name
        assert value not in SERVICE_SECRETS.values(), name


def test_child_environment_keeps_only_the_allow_list() -> None:
    source = {
        **SERVICE_SECRETS,
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_TIME": "C",
        "TZ": "UTC",
        "HOME": "/home/elsewhere",
    }
    env = child_environment(source)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_TIME": "C",
        "TZ": "UTC",
        "HOME": env["HOME"],
    }
    assert env["HOME"] != "/home/elsewhere"  # the effective user's home, not inherited


def test_child_environment_always_has_a_path() -> None:
    assert child_environment({})["PATH"] == child_process.DEFAULT_PATH


@pytest.mark.usefixtures("service_environment")
async def test_rclone_and_unmount_tools_get_no_secret(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "tools")
    storage = tools.storage(tmp_path / "fractal", tmp_path / "private" / "rclone")
    await mount(storage, client_id=None, client_secret=None)
    tools.behave("fusermount3", exit=1)  # so that every unmount tool runs
    tools.behave("fusermount", exit=1)
    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)

    roles = [call["role"] for call in tools.calls()]
    assert roles == ["rclone", "fusermount3", "fusermount", "umount"]
    for call in tools.calls():
        assert_allow_listed(call["env"])
        assert call["env"]["LANG"] == "C.UTF-8"


@pytest.mark.usefixtures("service_environment")
def test_rclone_version_check_gets_no_secret(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "tools")
    name, ok, _ = cloud_storage_check.check_rclone(tools.path("rclone"))
    assert (name, ok) == ("rclone", True)
    [call] = tools.calls("rclone")
    assert_allow_listed(call["env"])


@pytest.mark.usefixtures("service_environment")
def test_git_gets_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A `git` first on PATH that writes its environment where the test can read it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dump = tmp_path / "git-environ"
    git = bin_dir / "git"
    git.write_text(f'#!/bin/sh\nenv > "{dump}"\necho {"a" * 40}\n')
    git.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv(telemetry.GIT_COMMIT_ENV, raising=False)
    (tmp_path / "checkout" / ".git").mkdir(parents=True)

    assert telemetry.git_commit(tmp_path / "checkout") == "a" * 12
    env = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert_allow_listed(env)


async def test_run_child_captures_exit_code_and_output(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT):
        result = await run_child(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


async def test_unmount_tool_that_ignores_sigterm_cannot_overrun_its_bound(
    tmp_path: Path,
) -> None:
    # trio.run_process would SIGTERM, wait 5 s, SIGKILL, then wait for the exit: 5.5 s per hung
    # tool instead of 0.5 s. Three hung tools, a 0.5 s limit each: 1.5 s plus kill graces.
    tools = FakeTools(tmp_path / "tools")
    for role in ("fusermount3", "fusermount", "umount"):
        tools.behave(role, sleep=60, ignore_sigterm=True)
    bound = 3 * (0.5 + child_process.KILL_GRACE) + 1.0

    started = time.monotonic()
    with trio.fail_after(LIMIT):
        unmounted = await lazy_unmount(
            tmp_path / "mnt", tools.unmount_commands, per_command_limit=0.5
        )
    elapsed = time.monotonic() - started

    assert unmounted is False
    assert len(tools.calls()) == 3
    assert elapsed < bound, f"{elapsed:.1f} s"


async def test_cancelled_child_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f'trap "" TERM; echo $$ > "{pid_file}"; exec sleep 60'
    with trio.fail_after(LIMIT):
        with trio.move_on_after(0.5):
            await run_child(["sh", "-c", script])
        pid = int(pid_file.read_text())
        while Path(f"/proc/{pid}").exists():
            await trio.sleep(0.05)


def test_every_process_the_package_starts_gets_the_allow_listed_environment() -> None:
    """A guard against drift: each call that starts a process passes env=child_environment()."""
    import ast

    import fractal_hostd

    starters = {
        "subprocess.run",
        "subprocess.Popen",
        "subprocess.call",
        "subprocess.check_call",
        "subprocess.check_output",
        "trio.run_process",
        "trio.lowlevel.open_process",
        "os.system",
        "os.posix_spawn",
    }
    package = Path(fractal_hostd.__file__).parent
    calls = []
    for source in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if ast.unparse(node.func) in starters:
                env = {k.arg: ast.unparse(k.value) for k in node.keywords}.get("env")
                calls.append((f"{source.name}:{node.lineno}", env))
    assert calls, "found no process starts: the guard looks in the wrong place"
    assert [where for where, env in calls if env != "child_environment()"] == []
