"""The whole service on an untrusted FRACTAL_ROOT (issue 10 items 2 and 3), as a subprocess
against the fakes (tests/service_harness.py): start-up survives unexpected entries, and a
read-only FRACTAL_ROOT is a fatal condition named in one line, the host never reported ready.

Bounds are generous fail_afters (shared machines); the read-only test mounts (root only).
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

from tests.containers_fixtures import cid
from tests.mount_fixtures import read_only_root
from tests.service_harness import running_peers, running_service, service_env, started_service

__all__ = ["read_only_root"]  # fixture

START_BOUND = 60
EXIT_BOUND = 30


async def test_start_up_survives_unexpected_entries_in_the_mappings_directory(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "host-files"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    mappings = tmp_path / "fractal" / "containerResourceMappings"
    mappings.mkdir(parents=True)
    (mappings / cid(1)).write_text("a file named like a container id")
    (mappings / cid(2)).symlink_to(outside)
    (mappings / cid(3)).mkdir()
    (mappings / cid(3) / "tty").write_text("garbage")
    async with started_service(tmp_path, START_BOUND) as (peers, service):
        assert peers.webserver.heartbeats[0]["IsDyingHeartbeat"] is False
        # None of the three containers runs: their entries go, the link unfollowed.
        assert os.listdir(mappings) == []
        assert os.listdir(outside) == ["keep"]
        service.send_signal()
        with trio.fail_after(EXIT_BOUND):
            assert await service.wait() == 0


async def test_a_read_only_root_is_fatal_and_never_reported_ready(
    tmp_path: Path, read_only_root: Path
) -> None:
    async with (
        running_peers(tmp_path) as peers,
        running_service(tmp_path, service_env(tmp_path, peers)) as service,
    ):
        with trio.fail_after(EXIT_BOUND + START_BOUND):
            code = await service.wait()
        logs = service.logs()
    assert code == 1
    # Only the dying heartbeat: the host never said "ready" (heartbeat 0 of a live host).
    assert [h["IsDyingHeartbeat"] for h in peers.webserver.heartbeats] == [True]
    reason = peers.webserver.heartbeats[0]["ShutdownReason"]
    assert reason == f"cannot write in FRACTAL_ROOT={read_only_root}: Read-only file system"
    assert reason in logs
    assert '"message": "ready"' not in logs
