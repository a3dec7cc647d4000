"""`fractal-hostd check`: is this host ready to run the service? A readable report, exit 0/1.

Each check is a small function returning `CheckResult`s; `check_main` prints them. Failures
count towards the exit code; warnings (things the service survives without, such as rclone
for cloud storage) are shown but do not.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio

from fractal_hostd import instance_lock
from fractal_hostd.cloud_storage_check import check_prerequisites as cloud_storage_prerequisites
from fractal_hostd.config import Config
from fractal_hostd.docker.client import DockerClient, DockerError, DockerUnreachable

DOCKER_CHECK_TIMEOUT = 5.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str


def check_config(config: Config) -> list[CheckResult]:
    secret = "set" if config.webserver_auth_secret else "generated at start-up (localdev)"
    return [
        CheckResult("config", "ok", f"APP_ENV={config.app_env.value}, API on {config.api_bind}"),
        CheckResult(
            "webserver", "ok", config.webserver_url or "none (no handshake, no heartbeats)"
        ),
        CheckResult("auth secret", "ok", secret),
        CheckResult("metadata", "ok", config.imds_url or "off (static local metadata)"),
        CheckResult(
            "sentry", "ok", "enabled" if config.sentry_enabled else "disabled for this environment"
        ),
    ]


def check_root(config: Config, euid: int) -> CheckResult:
    if euid == 0:
        return CheckResult("root", "ok", "running as root")
    if config.is_localdev:
        return CheckResult("root", "warn", f"running as uid {euid}; required outside localdev")
    return CheckResult(
        "root", "fail", f"running as uid {euid}; APP_ENV={config.app_env.value} requires root"
    )


def check_writable_dir(name: str, path: Path) -> CheckResult:
    """The directory (or its nearest existing parent, which start-up would create it in)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return CheckResult(name, "fail", f"{existing} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return CheckResult(name, "fail", f"{existing} is not writable: {exc.strerror}")
    where = "exists" if existing == path else f"will be created under {existing}"
    return CheckResult(name, "ok", f"{path} writable ({where})")


def check_instance(config: Config, lock_dir: Path | None = None) -> CheckResult:
    """A running instance for the same directories: `run` would refuse to start (exit 2)."""
    pid = instance_lock.running_pid(config.root, config.private_dir, lock_dir=lock_dir)
    if pid is None:
        return CheckResult("instance", "ok", "no other instance runs for these directories")
    holder = f"pid {pid}" if pid > 0 else "pid unknown"
    return CheckResult(
        "instance",
        "fail",
        f"an instance is running ({holder}) for FRACTAL_ROOT={config.root} or "
        f"FRACTAL_PRIVATE_DIR={config.private_dir}; `run` would refuse to start",
    )


async def check_docker(socket_path: Path) -> CheckResult:
    client = DockerClient(str(socket_path))
    try:
        with trio.move_on_after(DOCKER_CHECK_TIMEOUT) as scope:
            version = await client.version()
        if scope.cancelled_caught:
            return CheckResult(
                "docker", "fail", f"no answer on {socket_path} within {DOCKER_CHECK_TIMEOUT:g} s"
            )
    except (DockerUnreachable, DockerError) as exc:
        return CheckResult("docker", "fail", f"{socket_path}: {exc}")
    finally:
        await client.aclose()
    return CheckResult(
        "docker",
        "ok",
        f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) "
        f"on {socket_path}",
    )


def check_cloud_storage() -> list[CheckResult]:
    return [
        CheckResult(name, "ok" if usable else "warn", detail)
        for name, usable, detail in cloud_storage_prerequisites()
    ]


def run_checks(config: Config) -> list[CheckResult]:
    results = check_config(config)
    results.append(check_root(config, os.geteuid()))
    results.append(check_instance(config))
    results.append(check_writable_dir("root dir", config.root))
    results.append(check_writable_dir("private dir", config.private_dir))
    results.append(trio.run(check_docker, config.docker_socket))
    results.extend(check_cloud_storage())
    return results


def print_report(results: list[CheckResult], out: TextIO) -> None:
    width = max(len(r.name) for r in results)
    for result in results:
        print(f"{result.status.upper():<4}  {result.name:<{width}}  {result.detail}", file=out)
    failed = sum(r.status == "fail" for r in results)
    print(f"\n{'ready' if not failed else f'{failed} check(s) failed'}", file=out)


def check_main(config: Config) -> int:
    results = run_checks(config)
    print_report(results, sys.stdout)
    return 1 if any(r.status == "fail" for r in results) else 0
