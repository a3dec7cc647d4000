"""The process as systemd and operators see it: one instance per host, signals, exit codes.

The real binary (`python -m fractal_hostd run`) against the fakes of tests/service_harness.py.
Bounds are generous `fail_after`s (shared machines), never speed assertions; measured figures
are printed for the notes (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import functools
import signal
import time
from pathlib import Path

import httpx
import trio

from fractal_hostd.process import early_signals
from tests.service_harness import (
    ServiceProcess,
    api_client,
    run_cli,
    running_peers,
    running_service,
    service_env,
    started_service,
)

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


async def test_second_instance_exits_2_and_touches_nothing(tmp_path: Path) -> None:
    async with started_service(tmp_path, START_BOUND) as (peers, first):
        env = first.env
        container_id = peers.docker.run(name="fhtest-lock")
        mapping = tmp_path / "fractal" / "containerResourceMappings" / container_id
        with trio.fail_after(10):
            while not (mapping / "tty").exists():
                await trio.sleep(0.02)
        private = tmp_path / "private"
        before = _snapshot(private)
        assert "key.pem" in before
        files_before = _snapshot(tmp_path / "fractal")
        assert f"containerResourceMappings/{container_id}/tty" in files_before
        handshakes = len(peers.webserver.handshakes)
        subscriptions = [r for r in peers.docker.requests if r.startswith("GET /events")]
        heartbeats = len(peers.webserver.heartbeats)
        # Same directories, another port; only the root shared; only the private dir shared.
        variants = [
            {"FRACTAL_API_BIND": "127.0.0.1:0"},
            {"FRACTAL_PRIVATE_DIR": str(tmp_path / "private2")},
            {"FRACTAL_ROOT": str(tmp_path / "fractal2")},
        ]
        for extra in variants:
            second = await trio.to_thread.run_sync(
                functools.partial(run_cli, {**env, **extra}, "run")
            )
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert f"pid {first.process.pid}" in lines[0]
        assert not (tmp_path / "private2").exists()
        assert not (tmp_path / "fractal2").exists()
        assert _snapshot(private) == before
        assert _snapshot(tmp_path / "fractal") == files_before
        # ...nor subscribed to Docker's events (the first start-up step touching Docker).
        assert [r for r in peers.docker.requests if r.startswith("GET /events")] == (subscriptions)
        assert len(peers.webserver.handshakes) == handshakes
        assert len(peers.webserver.heartbeats) == heartbeats
        assert peers.sentry.events == []

        check = await trio.to_thread.run_sync(lambda: run_cli(env, "check"))
        assert check.returncode == 1
        assert f"pid {first.process.pid}" in check.stdout

        first.send_signal()
        with trio.fail_after(EXIT_BOUND):
            assert await first.wait() == 0
        dying = [hb for hb in peers.webserver.heartbeats if hb["IsDyingHeartbeat"]]
        assert len(dying) == 1  # the first instance's own, at its own stop


def _caught_signals(pid: int) -> int:
    """The SigCgt mask of /proc/<pid>/status: signals with a handler installed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


async def _ready(service: ServiceProcess) -> None:
    """Start-up complete (heartbeat 0 answered): the service logged `ready`."""
    with trio.fail_after(START_BOUND):
        while '"msg": "ready"' not in service.logs():
            await trio.sleep(0.02)


async def _keep_signalling(service: ServiceProcess, *signums: int) -> None:
    """Send `signums` in turn every 20 ms until the process is gone."""
    while service.process.returncode is None:
        for signum in signums:
            with contextlib.suppress(ProcessLookupError):
                service.process.send_signal(signum)
        await trio.sleep(0.02)


async def _exit_under_fire(service: ServiceProcess, *signums: int) -> int:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_keep_signalling, service, *signums)
        with trio.fail_after(EXIT_BOUND):
            code = await service.wait()
        nursery.cancel_scope.cancel()
    return code


async def test_sighup_and_sigusr1_do_not_stop_the_service(tmp_path: Path) -> None:
    async with started_service(tmp_path, START_BOUND) as (peers, service):
        service.send_signal(signal.SIGHUP)
        service.send_signal(signal.SIGUSR1)
        with trio.fail_after(EXIT_BOUND):
            while "running tasks" not in service.logs():
                await trio.sleep(0.05)
        await trio.sleep(0.3)
        assert service.process.returncode is None
        service.send_signal()
        with trio.fail_after(EXIT_BOUND):
            assert await service.wait() == 0
        logs = service.logs()
        assert "received SIGHUP" in logs
        assert "task:heartbeats at " in logs  # the task tree: who, and where it waits
        assert [hb["IsDyingHeartbeat"] for hb in peers.webserver.heartbeats].count(True) == 1


async def test_repeated_stop_signals_change_nothing(tmp_path: Path) -> None:
    """SIGTERM, then SIGTERM and SIGINT every 20 ms until the end: one report, exit 0."""
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers, FRACTAL_SHUTDOWN_REPORT_TIMEOUT="1")
        async with running_service(tmp_path, env) as service:
            await _ready(service)
            peers.webserver.heartbeat_blackhole = True  # keeps the report busy for its budget
            code = await _exit_under_fire(service, signal.SIGTERM, signal.SIGINT)
        assert code == 0
        dying = [hb for hb in peers.webserver.heartbeats if hb["IsDyingHeartbeat"]]
        assert len(dying) == 1
        logs = service.logs()
        assert "Traceback" not in logs
        assert "KeyboardInterrupt" not in logs
        assert logs.count('"msg": "shutting down: received SIG') == 1  # one report
        assert "while shutting down: ignored" in logs


async def test_stop_signal_after_a_crash_keeps_exit_1(tmp_path: Path) -> None:
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers, FHD_TEST_CRASH_AFTER="3600")
        argv = ("-m", "tests.crashing_service")
        async with running_service(tmp_path, env, argv) as service:
            await _ready(service)
            peers.webserver.heartbeat_blackhole = True
            service.send_signal(signal.SIGUSR2)  # crash now
            with trio.fail_after(EXIT_BOUND):
                while not any(hb["IsDyingHeartbeat"] for hb in peers.webserver.heartbeats):
                    await trio.sleep(0.01)
            code = await _exit_under_fire(service, signal.SIGTERM, signal.SIGINT)
        assert code == 1
        dying = [hb for hb in peers.webserver.heartbeats if hb["IsDyingHeartbeat"]]
        assert len(dying) == 1
        assert dying[0]["ShutdownReason"].startswith("crash: ChildCrashed")
        assert "KeyboardInterrupt" not in service.logs()


async def test_sigterm_right_after_exec_still_runs_the_shutdown_path(tmp_path: Path) -> None:
    """SIGTERM as soon as every handled signal has a handler: exit 0 through the report.

    The handlers are installed before the heavy imports (trio, sentry-sdk, hypercorn): the
    signal lands while the interpreter still imports, is recorded, and honoured once trio
    listens.
    """
    handled = sum(1 << (signum - 1) for signum in early_signals.HANDLED)
    async with running_peers(tmp_path) as peers:
        async with running_service(tmp_path, service_env(tmp_path, peers)) as service:
            with trio.fail_after(START_BOUND):
                while _caught_signals(service.process.pid) & handled != handled:
                    await trio.sleep(0)
            window = time.monotonic() - service.exec_at
            service.send_signal()
            with trio.fail_after(EXIT_BOUND):
                code = await service.wait()
        print(f"\nexec → signals handled: {window * 1000:.1f} ms (spawn included)")
        assert code == 0
        logs = service.logs()
        assert "received SIGTERM: shutting down" in logs
        assert "shutting down: received SIGTERM" in logs  # the report ran
        assert "Traceback" not in logs
        assert peers.webserver.handshakes == []  # stopped before start-up began


async def test_stop_during_heartbeat_0_sends_dying_heartbeat_0(tmp_path: Path) -> None:
    """Start-up never completed (heartbeat 0 unanswered): the dying heartbeat is 0 (§4)."""
    async with running_peers(tmp_path) as peers:
        peers.webserver.heartbeat_blackhole = True
        env = service_env(tmp_path, peers, FRACTAL_SHUTDOWN_REPORT_TIMEOUT="1")
        async with running_service(tmp_path, env) as service:
            with trio.fail_after(START_BOUND):
                await peers.webserver.wait_for_heartbeats(1)
            service.send_signal()
            with trio.fail_after(EXIT_BOUND):
                assert await service.wait() == 0
        beats = [
            (hb["HeartbeatNumber"], hb["IsDyingHeartbeat"]) for hb in peers.webserver.heartbeats
        ]
        assert beats == [(0, False), (0, True)]


async def test_stop_removes_only_what_the_service_put_in_the_private_dir(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir()
    (private / "operators-notes.txt").write_text("not the service's")
    async with (
        running_peers(tmp_path) as peers,
        running_service(tmp_path, service_env(tmp_path, peers)) as service,
    ):
        await _ready(service)
        assert (private / "key.pem").exists()
        service.send_signal()
        with trio.fail_after(EXIT_BOUND):
            assert await service.wait() == 0
    assert sorted(p.name for p in private.iterdir()) == ["operators-notes.txt"]


def test_system_directory_as_private_dir_exits_2(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "FRACTAL_ROOT": str(tmp_path / "root")}
    done = run_cli(env, "run", "--private-dir", "/var/lib")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "FRACTAL_PRIVATE_DIR='/var/lib' is not allowed" in done.stderr


async def test_crash_with_every_peer_stuck_measures_the_real_stop(tmp_path: Path) -> None:
    """Crash while a request holds the API drain, the webserver and Sentry are blackholed.

    Default report budget (5 s). Prints the time from the crash to the exit for the notes
    (docs/architecture.md); the bound itself is asserted in virtual time (test_stop_bounds).
    """
    async with running_peers(tmp_path, sentry_blackhole=True) as peers:
        env = service_env(
            tmp_path,
            peers,
            FHD_TEST_CRASH_AFTER="3600",
            FRACTAL_CONTAINER_WAIT="60",  # the request outlives the API's graceful timeout
            FRACTAL_SHUTDOWN_REPORT_TIMEOUT="5",
        )
        argv = ("-m", "tests.crashing_service")
        async with running_service(tmp_path, env, argv) as service:
            await _ready(service)
            peers.webserver.heartbeat_blackhole = True

            async def held_request() -> None:
                async with api_client(tmp_path, timeout=60) as client:
                    with contextlib.suppress(httpx.HTTPError):
                        await client.put("/set_container_dpi", json={"host_port": 4999, "dpi": 96})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(held_request)
                await trio.sleep(0.5)
                crashed_at = service.send_signal(signal.SIGUSR2)  # crash now
                with trio.fail_after(EXIT_BOUND):
                    code = await service.wait()
                stop = time.monotonic() - crashed_at
                nursery.cancel_scope.cancel()
        print(f"\nreal stop, crash + API drain held + webserver and Sentry stuck: {stop:.2f} s")
        assert code == 1
        assert [hb["IsDyingHeartbeat"] for hb in peers.webserver.heartbeats].count(True) == 1
        assert peers.sentry.requests_seen >= 1
