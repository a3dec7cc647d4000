"""The process as systemd and operators see it: one instance per host, signals, exit codes.

The real binary (`python -m fractal_hostd run`) against the fakes of tests/service_harness.py.
Bounds are generous `fail_after`s (shared machines), never speed assertions; measured figures
are printed for the notes (`pytest -s`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from tests.service_harness import REPO, running_peers, running_service, service_env

START_BOUND = 60
EXIT_BOUND = 30


def _snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `directory`: (inode, mtime_ns, content)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            info = path.stat()
            files[str(path.relative_to(directory))] = (
                info.st_ino,
                info.st_mtime_ns,
                path.read_bytes(),
            )
    return files


def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fractal_hostd", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_second_instance_exits_2_and_touches_nothing(tmp_path: Path) -> None:
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers)
        async with running_service(tmp_path, env) as first:
            with trio.fail_after(START_BOUND):
                await peers.webserver.wait_for_heartbeats(1)
            private = tmp_path / "private"
            before = _snapshot(private)
            assert "key.pem" in before
            handshakes = len(peers.webserver.handshakes)
            heartbeats = len(peers.webserver.heartbeats)
            # Same directories, another port; only the root shared; only the private dir shared.
            variants = [
                {"FRACTAL_API_BIND": "127.0.0.1:0"},
                {"FRACTAL_PRIVATE_DIR": str(tmp_path / "private2")},
                {"FRACTAL_ROOT": str(tmp_path / "fractal2")},
            ]
            for extra in variants:
                second = await trio.to_thread.run_sync(
                    lambda extra=extra: _run_cli({**env, **extra}, "run")
                )
                assert second.returncode == 2, second.stderr
                lines = second.stderr.strip().splitlines()
                assert len(lines) == 1, second.stderr
                assert f"pid {first.process.pid}" in lines[0]
            assert not (tmp_path / "private2").exists()
            assert not (tmp_path / "fractal2").exists()
            assert _snapshot(private) == before
            assert len(peers.webserver.handshakes) == handshakes
            assert len(peers.webserver.heartbeats) == heartbeats
            assert peers.sentry.events == []

            check = await trio.to_thread.run_sync(lambda: _run_cli(env, "check"))
            assert check.returncode == 1
            assert f"pid {first.process.pid}" in check.stdout

            first.send_signal()
            with trio.fail_after(EXIT_BOUND):
                assert await first.wait() == 0
        dying = [hb for hb in peers.webserver.heartbeats if hb["IsDyingHeartbeat"]]
        assert len(dying) == 1  # the first instance's own, at its own stop
