"""The series an SRE pages on (issue 13 item 3), parsed with prometheus_client's own parser;
and `promtool check metrics` on the exposition when promtool is installed (Debian's
`prometheus` package ships it)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fractal_hostd.api.app import _MeasuredMounts
from fractal_hostd.cloud_storage.mounts import MountFailed, MountRequest, OAuthToken
from fractal_hostd.history import ContainerHistory
from fractal_hostd.hoststate import HeartbeatRecord, HostState
from fractal_hostd.metrics import Metrics
from tests.api_fixtures import AUTH, MOUNT_BODY, PORT, Api, FakeCloudStorage, make_api


async def _scrape(api: Api) -> str:
    answer = await api.app.test_client().get("/metrics", headers=AUTH)
    assert answer.status_code == 200
    return await answer.get_data(as_text=True)


async def _exercised(tmp_path: Path) -> Api:
    """An API whose every kind of observation happened at least once."""
    api = make_api(tmp_path)
    client = api.app.test_client()
    await api.add_container(PORT)
    assert api.cloud_storage is not None
    assert (
        await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    ).status_code == 200
    api.cloud_storage.fail_with = MountFailed("rclone said no")
    assert (
        await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    ).status_code == 406
    status = api.state.docker
    stamped = int((dt.datetime.now(dt.UTC).timestamp() - 0.2) * 1e9)
    status.event_processed({"Action": "start", "timeNano": stamped})
    status.files_written({"Action": "start", "timeNano": stamped})
    status.reconciled(trio.current_time() - 0.04)
    status.reconcile_failed()
    api.state.count_pending_file_writes = lambda: 2
    sent = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for ok in (True, False):
        api.state.last_heartbeat = HeartbeatRecord(
            number=0, sent_at=sent, ok=ok, round_trip_seconds=0.03
        )
        api.metrics.heartbeat_sent(api.state.last_heartbeat)
    return api


async def test_the_paging_series_are_exposed_with_units_and_totals(tmp_path: Path) -> None:
    api = await _exercised(tmp_path)
    families = {f.name: f for f in text_string_to_metric_families(await _scrape(api))}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    histograms = {
        "fractal_hostd_docker_event_lag_seconds": (),
        "fractal_hostd_container_start_to_files_seconds": (),
        "fractal_hostd_docker_reconcile_duration_seconds": (),
        "fractal_hostd_cloud_storage_mount_duration_seconds": (("provider", "dropbox"),),
        "fractal_hostd_heartbeat_round_trip_seconds": (),
    }
    for name, labels in histograms.items():
        assert families[name].type == "histogram", name
        assert samples[(f"{name}_count", labels)] >= 1, name
    assert 0.2 <= samples[("fractal_hostd_docker_event_lag_seconds_sum", ())] < 5
    reconcile_sum = samples[("fractal_hostd_docker_reconcile_duration_seconds_sum", ())]
    assert reconcile_sum == pytest.approx(0.04, abs=0.01)
    assert samples[("fractal_hostd_docker_reconcile_failures_total", ())] == 1
    assert (
        samples[("fractal_hostd_cloud_storage_mount_failures_total", (("provider", "dropbox"),))]
        == 1
    )
    assert samples[("fractal_hostd_pending_file_writes", ())] == 2
    # The one container start held the API for its write (fractal_hostd/event_priority.py).
    assert samples[("fractal_hostd_api_holds_total", ())] == 1
    assert 0 <= samples[("fractal_hostd_api_held_seconds_total", ())] < 1
    assert samples[("fractal_hostd_heartbeats_total", (("result", "failed"),))] == 1
    assert samples[("fractal_hostd_last_heartbeat_success_timestamp_seconds", ())] == 1767225600
    reconciled = samples[("fractal_hostd_docker_last_reconcile_success_timestamp_seconds", ())]
    assert abs(reconciled - dt.datetime.now(dt.UTC).timestamp()) < 60
    # Process metrics (prometheus_client's ProcessCollector) and build info.
    assert samples[("process_resident_memory_bytes", ())] > 1_000_000
    assert samples[("process_open_fds", ())] > 0
    assert ("process_cpu_seconds_total", ()) in samples
    build = families["fractal_hostd_build_info"].samples
    assert build[0].labels["version"] == "9.9.9"
    assert build[0].labels["environment"] == "localdev"
    # Conventions: counters end in _total; no _created series (see metrics.py).
    for family in families.values():
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        assert not any(s.name.endswith("_created") for s in family.samples), family.name


async def test_a_cancelled_mount_is_not_a_mount_failure(tmp_path: Path) -> None:
    metrics = Metrics()
    cloud = FakeCloudStorage(root=tmp_path, during_mount=trio.sleep_forever)
    mounts = _MeasuredMounts(cloud, metrics, ContainerHistory(list))
    with trio.move_on_after(0.01):
        await mounts.mount(
            MountRequest(PORT, "dropbox", OAuthToken("a", "r", "e", "t"), None, None),
            container_id="c",
        )
    text = generate_latest(metrics.registry).decode()
    failures = [
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "fractal_hostd_cloud_storage_mount_failures_total"
    ]
    assert failures == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
async def test_promtool_finds_nothing_to_complain_about(tmp_path: Path) -> None:
    text = await _scrape(await _exercised(tmp_path))
    done = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "", done.stdout


async def test_a_heartbeat_records_its_round_trip(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    from tests.test_heartbeat import MEMINFO, Recorder, make

    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    recorder = Recorder()
    recorder.gate = trio.Event()
    state = HostState(version="1", environment="dev")
    heartbeats = make(recorder, meminfo, state)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeats.send_now)
        await trio.sleep(0.75)  # the webserver takes 0.75 s to answer
        recorder.gate.set()
    assert state.last_heartbeat is not None
    assert state.last_heartbeat.round_trip_seconds == pytest.approx(0.75)
