"""The whole service as a real subprocess: start-up, signals, crashes, fatal conditions.

Peers are real servers on loopback (fake webserver, IMDS, Sentry) and a fake Docker Engine on
a unix socket; the service is `python -m fractal_hostd run` receiving real signals. Bounds
are generous `fail_after`s (these machines are shared), never speed assertions; the measured
start-up and shutdown times are printed for the notes (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography import x509

from tests.service_harness import (
    AUTH_SECRET,
    Peers,
    ServiceProcess,
    api_client,
    running_peers,
    running_service,
    service_env,
)

START_BOUND = 60  # seconds; a cold interpreter on a loaded 2-core machine is slow
EXIT_BOUND = 30


async def _wait_for_file(path: Path) -> str:
    while not path.exists():
        await trio.sleep(0.02)
    return path.read_text()


def _no_secrets(text: str, peers: Peers) -> None:
    assert AUTH_SECRET not in text
    assert peers.webserver.token not in text


def _sentry_raw(peers: Peers) -> str:
    return json.dumps(
        [item.payload for env in peers.sentry.envelopes for item in env.items], default=str
    )


async def _ready(service: ServiceProcess, peers: Peers) -> float:
    with trio.fail_after(START_BOUND):
        await peers.webserver.wait_for_heartbeats(1)
    return time.monotonic() - service.exec_at


async def _exit(service: ServiceProcess) -> tuple[int, float]:
    start = time.monotonic()
    with trio.fail_after(EXIT_BOUND):
        code = await service.wait()
    return code, time.monotonic() - start


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_ready_then_signal_sends_dying_heartbeat_and_exits_0(
    tmp_path: Path, signum: int
) -> None:
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers)
        async with running_service(tmp_path, env) as service:
            startup = await _ready(service, peers)
            handshake = peers.webserver.handshakes[0]
            assert set(handshake) == {"InstanceID", "InstanceType", "Region", "AWSAmiID"}
            first = peers.webserver.heartbeats[0]
            assert first["HeartbeatNumber"] == 0
            assert first["IsDyingHeartbeat"] is False
            assert first["InstanceID"] == handshake["InstanceID"]

            async with api_client(tmp_path, timeout=10) as client:
                health = await client.get("/health")
            assert (health.status_code, health.json()["status"]) == (200, "ok")
            san = x509.load_pem_x509_certificate(
                (tmp_path / "private" / "cert.pem").read_bytes()
            ).extensions.get_extension_for_class(x509.SubjectAlternativeName)
            addresses = {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
            assert {"127.0.0.1", "10.1.2.3", "203.0.113.7"} <= addresses  # loopback + host's

            service.send_signal(signum)
            code, shutdown = await _exit(service)
        print(f"\nstart-up exec→heartbeat 0: {startup:.3f} s; shutdown: {shutdown:.3f} s")
        assert code == 0
        dying = peers.webserver.heartbeats[-1]
        assert dying["IsDyingHeartbeat"] is True
        assert dying["HeartbeatNumber"] == len(peers.webserver.heartbeats) - 1
        assert dying["ShutdownReason"] == f"received {signal.Signals(signum).name}"
        assert peers.sentry.events == []  # a signal is not an error
        assert not (tmp_path / "private").exists()
        _no_secrets(service.logs(), peers)
        # One handshake, told once (by the webserver client, with its attempt count).
        assert service.logs().count("handshake with the webserver") == 1


async def test_managed_container_gets_files_and_dpi_over_the_api(tmp_path: Path) -> None:
    async with running_peers(tmp_path) as peers:
        async with running_service(tmp_path, service_env(tmp_path, peers)) as service:
            await _ready(service, peers)
            container_id = peers.docker.run(name="fhtest-e2e")
            host_port = int(peers.docker.containers[container_id].ports["32262/tcp"][0]["HostPort"])
            mapping = tmp_path / "fractal" / "containerResourceMappings" / container_id
            with trio.fail_after(10):
                assert await _wait_for_file(mapping / "tty") == "10"
            assert (mapping / "hostPort_for_my_32262_tcp").read_text() == str(host_port)

            async with api_client(tmp_path, timeout=10) as client:
                answer = await client.put(
                    "/set_container_dpi", json={"host_port": host_port, "dpi": 192}
                )
            assert answer.status_code == 200, answer.text
            assert (mapping / "DPI").read_text() == "192"
            assert (mapping / ".ready").read_text() == ".ready"

            peers.docker.kill(container_id)
            with trio.fail_after(10):
                while mapping.exists():
                    await trio.sleep(0.02)
            service.send_signal()
            assert (await _exit(service))[0] == 0
        _no_secrets(service.logs(), peers)


def _exception_event(peers: Peers) -> dict[str, Any]:
    events = [e for e in peers.sentry.events if e.get("exception")]
    assert len(events) == 1, events
    return events[0]


async def test_crash_in_a_child_is_reported_once_with_traceback(tmp_path: Path) -> None:
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers)
        argv = ("-m", "tests.crashing_service")
        async with running_service(tmp_path, env, argv) as service:
            await _ready(service, peers)
            code, _ = await _exit(service)
        assert code == 1
        event = _exception_event(peers)
        assert len(peers.sentry.events) == 1  # reported once: no extra log-line event
        exception = event["exception"]["values"][-1]
        assert exception["type"] == "ChildCrashed"
        frames = [f["function"] for f in exception["stacktrace"]["frames"]]
        assert "crash_soon" in frames
        dying = peers.webserver.heartbeats[-1]
        assert dying["IsDyingHeartbeat"] is True
        assert dying["ShutdownReason"].startswith("crash: ChildCrashed")
        _no_secrets(service.logs() + _sentry_raw(peers), peers)


async def test_handshake_failure_is_fatal_without_heartbeats(tmp_path: Path) -> None:
    async with running_peers(tmp_path) as peers:
        peers.webserver.handshake_status = 500
        env = service_env(tmp_path, peers, FRACTAL_HANDSHAKE_TIMEOUT="1")
        async with running_service(tmp_path, env) as service:
            code, _ = await _exit(service)
        assert code == 1
        assert peers.webserver.handshakes  # it tried
        assert peers.webserver.heartbeats == []  # no token: no (dying) heartbeat
        event = _exception_event(peers)
        assert event["exception"]["values"][-1]["type"] == "HandshakeFailed"


async def test_docker_unreachable_beyond_budget_is_fatal(tmp_path: Path) -> None:
    async with running_peers(tmp_path) as peers:
        env = service_env(
            tmp_path,
            peers,
            DOCKER_HOST=f"unix://{tmp_path}/missing.sock",
            FRACTAL_DOCKER_UNREACHABLE_BUDGET="1",
        )
        async with running_service(tmp_path, env) as service:
            code, _ = await _exit(service)
        assert code == 1
        assert _exception_event(peers)["exception"]["values"][-1]["type"] == (
            "DockerUnreachableFatal"
        )
        assert peers.webserver.heartbeats[-1]["IsDyingHeartbeat"] is True


async def test_blackholed_webserver_cannot_hold_the_exit(tmp_path: Path) -> None:
    async with running_peers(tmp_path) as peers:
        async with running_service(tmp_path, service_env(tmp_path, peers)) as service:
            await _ready(service, peers)
            peers.webserver.heartbeat_blackhole = True
            service.send_signal()
            code, shutdown = await _exit(service)
        print(f"\nshutdown with the webserver blackholed: {shutdown:.3f} s (report budget 2 s)")
        assert code == 0
        assert peers.webserver.heartbeats[-1]["IsDyingHeartbeat"] is True  # sent, never answered


async def test_blackholed_sentry_cannot_hold_the_exit_after_a_crash(tmp_path: Path) -> None:
    async with running_peers(tmp_path, sentry_blackhole=True) as peers:
        argv = ("-m", "tests.crashing_service")
        async with running_service(tmp_path, service_env(tmp_path, peers), argv) as service:
            await _ready(service, peers)
            code, shutdown = await _exit(service)
        print(f"\ncrash exit with Sentry blackholed: {shutdown:.3f} s (report budget 2 s)")
        assert code == 1
        assert peers.sentry.requests_seen >= 1
        assert peers.webserver.heartbeats[-1]["IsDyingHeartbeat"] is True


async def test_spot_notice_drains_the_host(tmp_path: Path) -> None:
    """Fake IMDS notice → heartbeat with IsDraining → /status draining → mounts refused."""
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers, FRACTAL_SPOT_POLL_INTERVAL="0.1")
        async with running_service(tmp_path, env) as service:
            await _ready(service, peers)
            container_id = peers.docker.run(name="fhtest-drain")
            host_port = int(peers.docker.containers[container_id].ports["32262/tcp"][0]["HostPort"])
            peers.imds.schedule_spot("terminate")
            with trio.fail_after(20):
                while not any(hb["IsDraining"] for hb in peers.webserver.heartbeats):
                    await trio.sleep(0.05)
            draining = [hb for hb in peers.webserver.heartbeats if hb["IsDraining"]]
            assert len(draining) == 1  # one immediate heartbeat, not one per poll
            assert draining[0]["IsDyingHeartbeat"] is False

            async with api_client(tmp_path, timeout=15) as client:
                status = (await client.get("/status")).json()
                mount = await client.post(
                    "/mount_cloud_storage",
                    json={
                        "host_port": host_port,
                        "provider": "dropbox",
                        "access_token": "at-secret-value",
                        "refresh_token": "rt-secret-value",
                        "expiry": "2030-01-01T00:00:00Z",
                        "token_type": "bearer",
                    },
                )
                dpi = await client.put(
                    "/set_container_dpi", json={"host_port": host_port, "dpi": 96}
                )
            assert status["draining"]
            assert (mount.status_code, mount.json()["error"]) == (406, "host is draining")
            assert dpi.status_code == 200  # containers already on the host still start
            service.send_signal()
            assert (await _exit(service))[0] == 0
        warnings = [e for e in peers.sentry.events if e.get("level") == "warning"]
        assert any("draining" in json.dumps(e) for e in warnings)
        logs = service.logs()
        assert "at-secret-value" not in logs
        assert "rt-secret-value" not in logs


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


async def test_restart_on_a_real_engine_keeps_the_tty(tmp_path: Path, docker_socket: Path) -> None:
    """Real dockerd: a container gets its files; after a service restart it keeps its TTY."""
    name = f"fhtest-e2e-{tmp_path.name[-8:]}"
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers, DOCKER_HOST=f"unix://{docker_socket}")
        mappings = tmp_path / "fractal" / "containerResourceMappings"
        container_id = ""
        try:
            async with running_service(tmp_path, env) as first:
                await _ready(first, peers)
                container_id = await trio.to_thread.run_sync(
                    _docker,
                    "run",
                    "-d",
                    "--name",
                    name,
                    "-p",
                    "127.0.0.1::32262",
                    "fractal-hostd-test-busybox:latest",
                    "sleep",
                    "300",
                )
                with trio.fail_after(20):
                    tty = await _wait_for_file(mappings / container_id / "tty")
                first.send_signal()
                assert (await _exit(first))[0] == 0
            assert (mappings / container_id / "tty").read_text() == tty  # kept for adoption

            heartbeats_before = len(peers.webserver.heartbeats)
            async with running_service(tmp_path, env) as second:
                with trio.fail_after(START_BOUND):
                    await peers.webserver.wait_for_heartbeats(heartbeats_before + 1)
                assert (mappings / container_id / "tty").read_text() == tty
                await trio.to_thread.run_sync(_docker, "rm", "-f", container_id)
                with trio.fail_after(20):
                    while (mappings / container_id).exists():
                        await trio.sleep(0.05)
                second.send_signal()
                assert (await _exit(second))[0] == 0
        finally:
            if container_id:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


@pytest.mark.parametrize("path", ["signal", "crash"])
async def test_in_flight_request_completes_on_every_shutdown_path(
    tmp_path: Path, path: str
) -> None:
    """A request still waiting for its container when the service stops gets its answer."""
    async with running_peers(tmp_path) as peers:
        env = service_env(
            tmp_path, peers, FRACTAL_CONTAINER_WAIT="1.5", FHD_TEST_CRASH_AFTER="3600"
        )
        argv = ("-m", "tests.crashing_service")
        async with running_service(tmp_path, env, argv) as service:
            await _ready(service, peers)
            answers: list[httpx.Response] = []

            async def slow_request() -> None:
                async with api_client(tmp_path, timeout=20) as client:
                    answers.append(
                        await client.put("/set_container_dpi", json={"host_port": 4999, "dpi": 96})
                    )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_request)
                await trio.sleep(0.5)  # the request is now waiting for host port 4999
                if path == "signal":
                    service.send_signal()
                else:
                    service.send_signal(signal.SIGUSR2)  # tests.crashing_service: crash now
            code, _ = await _exit(service)
        assert code == (0 if path == "signal" else 1)
        assert answers[0].status_code == 406
        assert "4999" in answers[0].json()["error"]


async def test_api_address_in_use_is_fatal_and_names_its_holder(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running_peers(tmp_path) as peers:
            env = service_env(tmp_path, peers, FRACTAL_API_BIND=f"127.0.0.1:{port}")
            async with running_service(tmp_path, env) as service:
                code, _ = await _exit(service)
            assert code == 1
            logs = service.logs()
            assert f"held by pid {os.getpid()} (" in logs
            assert "stop it or choose another port" in logs
            assert "Traceback" not in logs
            event = _exception_event(peers)
            exception = event["exception"]["values"][-1]
            assert exception["type"] == "ApiUnavailable"
            assert f"FRACTAL_API_BIND=127.0.0.1:{port}" in exception["value"]
            assert peers.webserver.heartbeats[-1]["IsDyingHeartbeat"] is True
