"""The real service's children get no secret: `python -m fractal_hostd run` with the API secret,
a Sentry DSN and NOTIFY_SOCKET in its environment, asked to mount cloud storage; the recording
fake rclone (first on PATH) writes down the environment it was started with.

Same peers and bounds as tests/test_service_e2e.py.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import trio

from tests.cloud_storage_fixtures import FakeTools
from tests.service_harness import (
    AUTH_SECRET,
    MOUNT_BODY,
    api_client,
    running_peers,
    running_service,
    service_env,
)

START_BOUND = 60
EXIT_BOUND = 30


async def test_rclone_started_by_the_service_gets_no_secret(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "tools")
    tools.behave("rclone", exit=1, stderr="fake rclone: refusing\n")  # answer 406 at once
    notify_dir = Path(tempfile.mkdtemp(prefix="fhd-notify-", dir="/tmp"))  # < 108 bytes
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_dir / "notify"))
    try:
        async with running_peers(tmp_path) as peers:
            env = service_env(
                tmp_path,
                peers,
                NOTIFY_SOCKET=str(notify_dir / "notify"),
                PATH=f"{tools.bin}:{os.environ['PATH']}",
            )
            async with running_service(tmp_path, env) as service:
                with trio.fail_after(START_BOUND):
                    await peers.webserver.wait_for_heartbeats(1)
                container_id = peers.docker.run(name="fhtest-e2e-env")
                ports = peers.docker.containers[container_id].ports
                host_port = int(ports["32262/tcp"][0]["HostPort"])
                async with api_client(tmp_path, timeout=30) as client:
                    answer = await client.post(
                        "/mount_cloud_storage", json={**MOUNT_BODY, "host_port": host_port}
                    )
                assert answer.status_code == 406, answer.text
                assert "fake rclone: refusing" in answer.text
                service.send_signal()
                with trio.fail_after(EXIT_BOUND):
                    assert await service.wait() == 0
    finally:
        notify.close()

    [call] = tools.calls("rclone")
    child_env = call["env"]
    for name in ("FRACTAL_WEBSERVER_AUTH_SECRET", "SENTRY_DSN", "NOTIFY_SOCKET", "FRACTAL_ROOT"):
        assert name not in child_env, name
    for value in (AUTH_SECRET, peers.sentry.dsn, peers.webserver.token):
        assert value not in str(child_env)
    assert child_env["PATH"] == env["PATH"]
