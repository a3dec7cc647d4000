"""The whole service as a subprocess: /ready after start-up and an operator's drain through
the real CLI (issue 13 items 1-2). Peers are the fakes of tests/service_harness.py; bounds
are generous `fail_after`s, never speed assertions.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from tests.service_harness import api_client, run_cli, started_service

START_BOUND = 60
EXIT_BOUND = 30


async def test_operator_drain_through_the_cli_drains_like_a_spot_notice(tmp_path: Path) -> None:
    async with started_service(tmp_path, START_BOUND) as (peers, service):
        async with api_client(tmp_path, timeout=15) as client:
            with trio.fail_after(START_BOUND):
                ready = await client.get("/ready")
                while ready.status_code != 200:  # READY=1 and the flag are microseconds apart
                    await trio.sleep(0.05)
                    ready = await client.get("/ready")
            assert ready.json()["checks"]["docker_connected"] is True

            def drain(*extra: str) -> subprocess.CompletedProcess[str]:
                return run_cli(service.env, "drain", *extra)

            first = await trio.to_thread.run_sync(drain, "--reason", "rolling kernel update")
            assert first.returncode == 0, first.stderr
            assert "host is draining: YES: operator (rolling kernel update)" in first.stdout
            # Immediate: the drain heartbeat went out before the command answered.
            draining = [hb for hb in peers.webserver.heartbeats if hb["IsDraining"]]
            assert len(draining) == 1
            assert draining[0]["HeartbeatNumber"] >= 1
            second = await trio.to_thread.run_sync(drain)
            assert second.returncode == 0, second.stderr
            assert "(it already was)" in second.stdout
            assert len([hb for hb in peers.webserver.heartbeats if hb["IsDraining"]]) == 1

            not_ready = await client.get("/ready")
            assert not_ready.status_code == 503
            assert not_ready.json()["failing"] == ["draining"]
            status = (await client.get("/status")).json()
            assert status["draining"]["kind"] == "operator"
            assert status["draining"]["reason"] == "rolling kernel update"
        service.send_signal()
        with trio.fail_after(EXIT_BOUND):
            assert await service.wait() == 0
        warnings = [e for e in peers.sentry.events if e.get("level") == "warning"]
        assert any("draining" in str(e) for e in warnings)
