"""GET /health's checks, GET /ready's verdict, POST /drain (issue 13 items 1-2).

Quart's test client over the real registry and lifecycle (tests/api_fixtures.py); readiness
ages use autojump_clock, so the thresholds are asserted in virtual time.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fractal_hostd.api.health import RECONCILE_STALE_AFTER
from fractal_hostd.containers.info import ContainerInfo
from fractal_hostd.containers.lifecycle import ContainerLifecycle, run_inline
from fractal_hostd.containers.registry import ContainerRegistry
from fractal_hostd.docker.client import DockerClient
from fractal_hostd.hoststate import DockerStatus, DrainNotice
from tests.api_fixtures import AUTH, MOUNT_BODY, PORT, Api, make_api
from tests.docker_fixtures import event_stream_running, fake_client, fake_docker
from tests.fakes.docker_engine import FakeDockerEngine

__all__ = ["fake_client", "fake_docker"]


async def _json(response: Any) -> Any:
    return json.loads(await response.get_data())


def _healthy(api: Api) -> None:
    api.state.mark_started()
    api.state.docker.connected = True
    api.state.docker.reconciled(trio.current_time())


async def test_health_is_200_with_failing_checks_and_shows_them(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    api.state.count_pending_file_writes = lambda: 3
    answer = await api.app.test_client().get("/health")
    assert answer.status_code == 200  # liveness: the supervisor runs
    assert await _json(answer) == {
        "status": "ok",
        "checks": {
            "started": False,
            "docker_connected": False,
            "last_reconcile_age_seconds": None,
            "event_lag_seconds": None,
            "pending_file_writes": 3,
            "draining": False,
        },
    }


async def test_ready_is_503_naming_every_failing_check_until_all_pass(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    answer = await client.get("/ready")
    assert answer.status_code == 503
    body = await _json(answer)
    assert body["failing"] == ["startup", "docker", "reconcile"]
    assert "start-up has not completed" in body["error"]
    assert "Docker event stream is not connected" in body["error"]

    _healthy(api)
    await trio.sleep(5)
    answer = await client.get("/ready")
    assert answer.status_code == 200
    body = await _json(answer)
    assert body["result"] == "ready"
    assert body["checks"]["last_reconcile_age_seconds"] == 5.0


async def test_ready_fails_when_the_last_reconcile_is_too_old(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    _healthy(api)
    await trio.sleep(RECONCILE_STALE_AFTER)
    assert (await client.get("/ready")).status_code == 200  # at the threshold: still fresh
    await trio.sleep(1)
    answer = await client.get("/ready")
    assert answer.status_code == 503
    assert (await _json(answer))["failing"] == ["reconcile"]
    api.state.docker.reconciled(trio.current_time())
    assert (await client.get("/ready")).status_code == 200


async def test_ready_fails_while_docker_is_disconnected_or_the_host_drains(
    tmp_path: Path,
) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    _healthy(api)
    api.state.docker.connected = False
    assert (await _json(await client.get("/ready")))["failing"] == ["docker"]
    api.state.docker.connected = True
    api.state.start_draining(
        DrainNotice(kind="spot", action="stop", time="t", seen_at=dt.datetime.now(dt.UTC))
    )
    answer = await client.get("/ready")
    assert answer.status_code == 503
    assert (await _json(answer))["failing"] == ["draining"]


async def test_drain_needs_auth_and_validates_the_reason(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    assert (await client.post("/drain")).status_code == 401
    assert (await client.post("/drain", json={"reason": "x"})).status_code == 401
    bad = await client.post("/drain", json={"reason": 5}, headers=AUTH)
    assert bad.status_code == 400
    assert "reason" in (await _json(bad))["error"]
    assert (await client.post("/drain", json={"reason": "a\nb"}, headers=AUTH)).status_code == 400
    assert api.state.draining is None


async def test_drain_drains_like_a_spot_notice_once(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    await api.add_container(PORT)
    client = api.app.test_client()
    hook_calls: list[DrainNotice] = []

    async def hook(notice: DrainNotice) -> None:
        hook_calls.append(notice)

    api.state.drain_hook = hook
    before = dt.datetime.now(dt.UTC)
    answer = await client.post("/drain", json={"reason": "kernel upgrade"}, headers=AUTH)
    assert answer.status_code == 200
    result = (await _json(answer))["result"]
    assert result["already_draining"] is False
    assert result["draining"]["kind"] == "operator"
    assert result["draining"]["reason"] == "kernel upgrade"
    assert len(hook_calls) == 1
    assert api.state.draining_started.is_set()

    status = await _json(await client.get("/status", headers=AUTH))
    assert status["draining"]["reason"] == "kernel upgrade"
    assert dt.datetime.fromisoformat(status["draining"]["seen_at"]) >= before
    mount = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    assert (mount.status_code, (await _json(mount))["error"]) == (406, "host is draining")

    again = await client.post("/drain", headers=AUTH)  # no body: reason is optional
    assert again.status_code == 200
    again_result = (await _json(again))["result"]
    assert again_result["already_draining"] is True
    assert again_result["draining"]["reason"] == "kernel upgrade"  # the first reason stays
    assert len(hook_calls) == 1  # idempotent: no second heartbeat


async def test_drain_after_a_spot_notice_keeps_the_spot_reason(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    api.state.start_draining(
        DrainNotice(kind="spot", action="terminate", time="T", seen_at=dt.datetime.now(dt.UTC))
    )
    answer = await api.app.test_client().post("/drain", json={"reason": "x"}, headers=AUTH)
    result = (await _json(answer))["result"]
    assert result["already_draining"] is True
    assert result["draining"]["kind"] == "spot"


def test_docker_status_records_lag_reconciles_and_start_latency() -> None:
    seen: list[tuple[str, float | None]] = []

    class Listener:
        def event_processed(self, event: Any, lag_seconds: float | None) -> None:
            seen.append(("event", lag_seconds))

        def files_written(self, event: Any, seconds: float) -> None:
            seen.append(("files", seconds))

        def reconcile_done(self, duration_seconds: float | None, ok: bool) -> None:
            seen.append(("reconcile" if ok else "reconcile-failed", duration_seconds))

    status = DockerStatus(listeners=[Listener()])
    stamped = dt.datetime.now(dt.UTC).timestamp() - 2.0
    status.event_processed({"Action": "start", "timeNano": int(stamped * 1e9)})
    assert status.events_processed == 1
    assert status.last_event_lag_seconds is not None
    assert 2.0 <= status.last_event_lag_seconds < 3.0
    status.files_written({"Action": "start", "time": int(stamped)})
    status.files_written({"Action": "die", "time": int(stamped)})  # not a start: not observed
    status.event_processed({"Action": "die"})  # no time: lag unknown, keeps the last one
    assert 2.0 <= status.last_event_lag_seconds < 3.0
    status.reconcile_failed()
    assert status.reconcile_failures == 1
    assert [kind for kind, _ in seen] == ["event", "files", "event", "reconcile-failed"]
    assert seen[1][1] is not None
    assert seen[1][1] >= 2.0


class _FailingReconcile(ContainerLifecycle):
    async def reconcile(self, running: Sequence[ContainerInfo], **kwargs: Any) -> None:
        raise RuntimeError("reconcile broke")


async def test_the_event_stream_records_reconciles_lag_and_failures(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Inline file I/O: the autojump clock would otherwise race the worker thread.
    lifecycle = _FailingReconcile(
        mappings_dir=tmp_path / "m", registry=ContainerRegistry(), run_blocking=run_inline
    )
    status = DockerStatus()
    with trio.fail_after(400):
        async with event_stream_running(
            fake_client,
            lifecycle,
            status,
            unreachable_budget=120.0,
            reconcile_interval=100.0,
            reconcile_jitter=0.0,
        ):
            assert status.last_reconcile_at == trio.current_time()  # the adoption
            assert status.last_reconcile_unix is not None
            first = status.last_reconcile_at
            fake_docker.run("fhtest-lag")
            while status.events_processed == 0:
                await trio.sleep(0.01)
            assert status.last_event_lag_seconds is not None
            await trio.sleep(150)  # the periodic reconcile at 100 s fails
            assert status.reconcile_failures == 1
            assert status.last_reconcile_at == first


async def test_a_drain_hook_that_hangs_is_cut_short_and_the_drain_stands(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from fractal_hostd.api.routes import DRAIN_HOOK_TIMEOUT

    api = make_api(tmp_path)

    async def hanging_hook(notice: DrainNotice) -> None:
        await trio.sleep_forever()

    api.state.drain_hook = hanging_hook
    started = trio.current_time()
    answer = await api.app.test_client().post("/drain", headers=AUTH)
    assert answer.status_code == 200
    assert (await _json(answer))["result"]["already_draining"] is False
    assert trio.current_time() - started == DRAIN_HOOK_TIMEOUT
    assert api.state.draining is not None


async def test_ready_probes_log_at_debug_whatever_they_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api = make_api(tmp_path)
    caplog.set_level("DEBUG")
    assert (await api.app.test_client().get("/ready")).status_code == 503
    lines = [r for r in caplog.records if getattr(r, "path", None) == "/ready"]
    assert [r.levelname for r in lines] == ["DEBUG"]
