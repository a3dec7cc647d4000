"""Shared pieces of the cloud-storage tests: made-up credentials and the recording fake tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from fractal_hostd.cloud_storage.mounts import CloudStorage, MountOptions, MountRequest, OAuthToken

FAKE_RCLONE = Path(__file__).parent / "fakes" / "fake_rclone.py"
PORT = 32768  # the container's host port in every cloud-storage test
LIMIT = 20  # absolute bound of a mount in these tests

# Made-up credentials, distinctive enough that finding one anywhere is a real leak.
ACCESS_TOKEN = "ya29.ACCESS-Zq8m3Kx7-made-up"
REFRESH_TOKEN = "1//REFRESH-Wn5t2Lp9-made-up"
CLIENT_SECRET = "CLIENT-SECRET-Hb4v6Qr1"
CLIENT_ID = "1234-client.apps.example"
SECRETS = (ACCESS_TOKEN, REFRESH_TOKEN, CLIENT_SECRET)

TOKEN = OAuthToken(
    access_token=ACCESS_TOKEN,
    refresh_token=REFRESH_TOKEN,
    expiry="2099-01-01T00:00:00Z",
    token_type="Bearer",
)

CONTAINER_ID = "c" * 64
OTHER_CONTAINER_ID = "d" * 64

# An unrelated mount that the cloud-storage code must never touch.
UNRELATED_MOUNTINFO = (
    "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    "23 22 0:5 / /dev rw,nosuid - devtmpfs udev rw\n"
    "24 22 0:40 / /media/other\\040fuse rw - fuse.rclone other: rw\n"
)

ROLES = ("rclone", "fusermount3", "fusermount", "umount")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


class FakeTools:
    """Wrappers named like the real tools, each running fake_rclone.py with its role."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True)
        self.log = directory / "calls.jsonl"
        self.log.touch()
        self.mountinfo = directory / "mountinfo"
        self.mountinfo.write_text(UNRELATED_MOUNTINFO)
        self.control = directory / "control.json"
        self.roles: dict[str, dict[str, Any]] = {}
        self._write_control()
        for role in ROLES:
            wrapper = self.bin / role
            wrapper.write_text(
                f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_RCLONE}" "{self.control}" {role} "$@"\n'
            )
            wrapper.chmod(0o755)

    def _write_control(self) -> None:
        control = {"log": str(self.log), "mountinfo": str(self.mountinfo), "roles": self.roles}
        self.control.write_text(json.dumps(control))

    def behave(self, role: str, **behaviour: Any) -> None:
        """exit=int, stderr=str, sleep=seconds, mount=bool (rclone mount adds a mount line),
        ignore_sigterm=bool."""
        self.roles[role] = behaviour
        self._write_control()

    def path(self, role: str) -> str:
        return str(self.bin / role)

    @property
    def unmount_commands(self) -> list[list[str]]:
        return [
            [self.path("fusermount3"), "-u", "-z"],
            [self.path("fusermount"), "-u", "-z"],
            [self.path("umount"), "-l"],
        ]

    def calls(self, role: str | None = None) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in records if role is None or r["role"] == role]

    def add_mount(self, mount_point: Path, source: str = "leftover:") -> None:
        escaped = str(mount_point).replace(" ", "\\040")
        with self.mountinfo.open("a") as file:
            file.write(f"99 22 0:99 / {escaped} rw - fuse.rclone {source} rw\n")

    def mounted(self) -> str:
        return self.mountinfo.read_text()

    def storage(self, root: Path, config_dir: Path, **overrides: Any) -> CloudStorage:
        """Caches in `<config_dir>/../../rclone-cache` unless `cache_dir` is given."""
        settings: dict[str, Any] = {
            "cache_dir": config_dir.parent.parent / "rclone-cache",
            "rclone": self.path("rclone"),
            "unmount_commands": self.unmount_commands,
            "mountinfo_path": self.mountinfo,
            "mount_timeout": 10.0,
            "options": MountOptions(daemon_wait=5.0),
        }
        settings.update(overrides)
        return CloudStorage(root=root, config_dir=config_dir, **settings)


@pytest.fixture
def tools(tmp_path: Path) -> FakeTools:
    return FakeTools(tmp_path / "tools")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "fractal"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "private" / "rclone"


async def mount(
    storage: CloudStorage,
    provider: str = "google_drive",
    *,
    host_port: int = PORT,
    container_id: str = CONTAINER_ID,
    token: OAuthToken = TOKEN,
    client_id: str | None = CLIENT_ID,
    client_secret: str | None = CLIENT_SECRET,
    bound: float = LIMIT,
) -> Path:
    with trio.fail_after(bound):
        return await storage.mount(
            MountRequest(host_port, provider, token, client_id, client_secret),
            container_id=container_id,
        )
