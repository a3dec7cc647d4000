"""`fractal-hostd check`: is this host ready to run the service? A readable report, exit 0/1.

Each check is a small function returning `CheckResult`s; `check_main` prints them. Failures
count towards the exit code; warnings (things the service survives without, such as rclone
for cloud storage) are shown but do not. Every failure and warning carries its remedy, printed
on the line below it: the operator reading the report should not have to look it up.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import trio

from fractal_hostd.cloud_storage.check import check_prerequisites as cloud_storage_prerequisites
from fractal_hostd.config import Config
from fractal_hostd.docker.client import DockerClient, DockerError, DockerUnreachable
from fractal_hostd.process import instance_lock
from fractal_hostd.process.portholder import describe_port_holder, listening_inodes

DOCKER_CHECK_TIMEOUT = 5.0
_DOCKER_REMEDY = (
    "start Docker (`make docker`, or `systemctl start docker`), or set DOCKER_HOST to the "
    "socket it answers on"
)
_DIR_VARIABLES = {"root dir": "FRACTAL_ROOT", "private dir": "FRACTAL_PRIVATE_DIR"}
_CLOUD_STORAGE_REMEDIES = {
    "rclone": "apt-get install rclone (cloud storage mounts need it)",
    "fusermount": "apt-get install fuse3",
    "/dev/fuse": "load the fuse module (modprobe fuse), or give the container /dev/fuse",
    "allow_other": "run as root, or add user_allow_other to /etc/fuse.conf",
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    remedy: str = ""  # what to do about a warning or a failure


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
        return CheckResult(
            "root",
            "warn",
            f"running as uid {euid}; required outside localdev",
            "run it as root (sudo, or the systemd unit) before leaving localdev",
        )
    return CheckResult(
        "root",
        "fail",
        f"running as uid {euid}; APP_ENV={config.app_env.value} requires root",
        "run it as root: `sudo fractal-hostd ...` or `systemctl start fractal-hostd`",
    )


def check_writable_dir(name: str, path: Path) -> CheckResult:
    """The directory (or its nearest existing parent, which start-up would create it in)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    variable = _DIR_VARIABLES.get(name, "its variable")
    if not existing.is_dir():
        return CheckResult(
            name,
            "fail",
            f"{existing} is not a directory",
            f"move {existing} out of the way, or point {variable} elsewhere",
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return CheckResult(
            name,
            "fail",
            f"{existing} is not writable: {exc.strerror}",
            f"run as root, free space or remount {existing} read-write, or point {variable} "
            "at a writable directory",
        )
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
                "docker",
                "fail",
                f"no answer on {socket_path} within {DOCKER_CHECK_TIMEOUT:g} s",
                _DOCKER_REMEDY,
            )
    except (DockerUnreachable, DockerError) as exc:
        return CheckResult("docker", "fail", f"{socket_path}: {exc}", _DOCKER_REMEDY)
    finally:
        await client.aclose()
    return CheckResult(
        "docker",
        "ok",
        f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) "
        f"on {socket_path}",
    )


def check_api_port(config: Config) -> CheckResult:
    """Whether something already listens where the API will (port 0: any free port)."""
    if config.api_port == 0:
        return CheckResult("api port", "ok", "port 0: any free port is taken at start-up")
    inodes = listening_inodes(config.api_port, config.api_host)
    if not inodes:
        return CheckResult("api port", "ok", f"{config.api_port} is free")
    return CheckResult(
        "api port",
        "fail",
        f"{config.api_port} is in use, {describe_port_holder(config.api_port)}",
        "stop that process (`systemctl stop fractal-hostd` if it is a running service), or "
        "choose another port with FRACTAL_API_BIND / --api-bind",
    )


def check_cloud_storage() -> list[CheckResult]:
    return [
        CheckResult(
            name,
            "ok" if usable else "warn",
            detail,
            "" if usable else _CLOUD_STORAGE_REMEDIES.get(name, "see docs/cloud-storage.md"),
        )
        for name, usable, detail in cloud_storage_prerequisites()
    ]


def run_checks(config: Config) -> list[CheckResult]:
    results = check_config(config)
    results.append(check_root(config, os.geteuid()))
    results.append(check_instance(config))
    results.append(check_writable_dir("root dir", config.root))
    results.append(check_writable_dir("private dir", config.private_dir))
    results.append(check_api_port(config))
    results.append(trio.run(check_docker, config.docker_socket))
    results.extend(check_cloud_storage())
    return results


def print_report(results: list[CheckResult], out: TextIO) -> None:
    width = max(len(r.name) for r in results)
    for result in results:
        print(f"{result.status.upper():<4}  {result.name:<{width}}  {result.detail}", file=out)
        if result.status != "ok" and result.remedy:
            print(f"{'':<4}  {'':<{width}}  → {result.remedy}", file=out)
    failed = sum(r.status == "fail" for r in results)
    print(f"\n{'ready' if not failed else f'{failed} check(s) failed'}", file=out)


def check_main(config: Config) -> int:
    results = run_checks(config)
    print_report(results, sys.stdout)
    return 1 if any(r.status == "fail" for r in results) else 0
