"""A mount against its container's death, through the real service: `python -m fractal_hostd
run` with the fake Docker engine and the recording fake rclone (first on PATH).

Same peers and bounds as tests/test_service_e2e.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio

from tests.cloud_storage_fixtures import FakeTools
from tests.service_harness import (
    MOUNT_BODY,
    api_client,
    running_peers,
    running_service,
    service_env,
)

START_BOUND = 60
EXIT_BOUND = 30
ANSWER_BOUND = 60  # well past the service's 20 s mount limit: the message tells them apart


async def test_a_container_killed_while_rclone_mounts_cancels_its_mount(tmp_path: Path) -> None:
    # rclone hangs; the container is killed meanwhile. Its death must cancel the mount in
    # flight (answer: no container), not leave it to rclone's 20 s limit, and leave nothing.
    tools = FakeTools(tmp_path / "tools")
    tools.behave("rclone", sleep=120)
    answers: list[httpx.Response] = []
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers, PATH=f"{tools.bin}:{os.environ['PATH']}")
        async with running_service(tmp_path, env) as service:
            with trio.fail_after(START_BOUND):
                await peers.webserver.wait_for_heartbeats(1)
            container_id = peers.docker.run(name="fhtest-e2e-mount-death")
            ports = peers.docker.containers[container_id].ports
            host_port = int(ports["32262/tcp"][0]["HostPort"])
            mappings = tmp_path / "fractal" / "containerResourceMappings"
            async with api_client(tmp_path, timeout=ANSWER_BOUND) as client:

                async def mount() -> None:
                    answers.append(
                        await client.post(
                            "/mount_cloud_storage", json={**MOUNT_BODY, "host_port": host_port}
                        )
                    )

                with trio.fail_after(ANSWER_BOUND):
                    while not (mappings / container_id).exists():
                        await trio.sleep(0.05)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(mount)
                        while not tools.calls("rclone"):
                            await trio.sleep(0.05)
                        peers.docker.kill(container_id)
            service.send_signal()
            with trio.fail_after(EXIT_BOUND):
                assert await service.wait() == 0

    [answer] = answers
    assert answer.status_code == 406, answer.text
    assert answer.json()["error"] == f"no container with host port {host_port}"
    assert not (tmp_path / "fractal" / "cloudStorage" / str(host_port)).exists()
