"""Every endpoint of contract §5 and every error code, through Quart's test client.

The app runs over the real container registry and lifecycle writing into tmp_path; only
cloud storage is a fake (tests/api_fixtures.py). No network. Waits use autojump_clock.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from quart.typing import TestClientProtocol as Client

from fractal_hostd.containers import ContainerInfo
from fractal_hostd.hoststate import DrainNotice, HeartbeatRecord
from tests.api_fixtures import AUTH, SECRET, Api, container_id, make_api
from tests.instance_fixtures import PUBLIC_METADATA

PORT = 40000
MOUNT_BODY = {
    "host_port": PORT,
    "provider": "google_drive",
    "access_token": "ya29.access",
    "refresh_token": "1//refresh",
    "expiry": "2026-11-25T13:00:00Z",
    "token_type": "Bearer",
    "client_id": "cid.apps.googleusercontent.com",
    "client_secret": "csecret",
}


@pytest.fixture
def api(tmp_path: Path) -> Api:
    return make_api(tmp_path)


@pytest.fixture
def client(api: Api) -> Client:
    return api.app.test_client()


async def _json(response: Any) -> Any:
    return json.loads(await response.get_data())


# --- PUT /set_container_dpi -------------------------------------------------------------


async def test_set_dpi_writes_dpi_then_ready(api: Api, client: Client) -> None:
    record = await api.add_container(PORT)
    answer = await client.put(
        "/set_container_dpi", json={"host_port": PORT, "dpi": 192}, headers=AUTH
    )
    assert answer.status_code == 200
    assert (await _json(answer))["result"] == {
        "id": container_id(PORT),
        "host_port": PORT,
        "tty": 10,
        "dpi": 192,
        "container_arn": None,
        "ready": True,
        "files_pending": False,
        "cloud_storage": [],
    }
    assert api.mapping_file(PORT, "DPI").read_text() == "192"
    assert api.mapping_file(PORT, ".ready").read_text() == ".ready"
    assert record.dpi == 192
    assert record.ready


async def test_set_dpi_accepts_the_secret_in_the_body(api: Api, client: Client) -> None:
    await api.add_container(PORT)
    answer = await client.put(
        "/set_container_dpi", json={"host_port": PORT, "dpi": 96, "auth_secret": SECRET}
    )
    assert answer.status_code == 200


async def test_set_dpi_waits_for_a_container_that_starts_late(
    api: Api, client: Client, autojump_clock: trio.abc.Clock
) -> None:
    answers: list[Any] = []

    async def call() -> None:
        answers.append(
            await client.put(
                "/set_container_dpi", json={"host_port": PORT, "dpi": 96}, headers=AUTH
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        await trio.sleep(0.3)  # below container_wait (0.5 s)
        await api.add_container(PORT)
    assert answers[0].status_code == 200
    assert api.mapping_file(PORT, ".ready").exists()


async def test_set_dpi_for_an_unknown_port_is_406_after_the_wait(
    client: Client, autojump_clock: trio.abc.Clock
) -> None:
    started = trio.current_time()
    answer = await client.put(
        "/set_container_dpi", json={"host_port": PORT, "dpi": 96}, headers=AUTH
    )
    assert trio.current_time() - started == pytest.approx(0.5)
    assert answer.status_code == 406
    assert await _json(answer) == {"result": None, "error": f"no container with host port {PORT}"}


# --- PUT /set_container_start_values ----------------------------------------------------


async def test_start_values_write_dpi_arn_then_ready(api: Api, client: Client) -> None:
    await api.add_container(PORT)
    arn = "arn:aws:ecs:us-east-1:123456789012:container/abc"
    answer = await client.put(
        "/set_container_start_values",
        json={
            "host_port": PORT,
            "dpi": 96,
            "container_ARN": arn,
            "user_id": "user@example.com",
            "client_app_auth_secret": "app-secret",
            "unknown_field": [1, 2, 3],
        },
        headers=AUTH,
    )
    assert answer.status_code == 200
    assert (await _json(answer))["result"]["container_arn"] == arn
    assert api.mapping_file(PORT, "ContainerARN").read_text() == arn
    assert api.mapping_file(PORT, "DPI").read_text() == "96"
    assert api.mapping_file(PORT, ".ready").exists()


@pytest.mark.parametrize("arn", [None, ""])
async def test_start_values_without_arn_write_no_arn_file(
    api: Api, client: Client, arn: str | None
) -> None:
    await api.add_container(PORT)
    answer = await client.put(
        "/set_container_start_values",
        json={"host_port": PORT, "dpi": 96, "container_ARN": arn},
        headers=AUTH,
    )
    assert answer.status_code == 200
    assert not api.mapping_file(PORT, "ContainerARN").exists()
    assert api.mapping_file(PORT, ".ready").exists()


async def test_start_values_for_an_unknown_port_is_406(
    client: Client, autojump_clock: trio.abc.Clock
) -> None:
    answer = await client.put(
        "/set_container_start_values", json={"host_port": PORT, "dpi": 96}, headers=AUTH
    )
    assert answer.status_code == 406


# --- POST /mount_cloud_storage ----------------------------------------------------------


async def test_mount_calls_cloud_storage_and_records_the_provider(api: Api, client: Client) -> None:
    record = await api.add_container(PORT)
    answer = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    assert answer.status_code == 200
    assert (await _json(answer))["result"] == {
        "host_port": PORT,
        "provider": "google_drive",
        "mount_point": str(api.mappings_dir.parent / "cloudStorage" / str(PORT) / "Google Drive"),
    }
    assert api.cloud_storage is not None
    (mount,) = api.cloud_storage.mounts
    assert mount["container_id"] == record.id
    assert mount["client_id"] == MOUNT_BODY["client_id"]
    assert mount["client_secret"] == MOUNT_BODY["client_secret"]
    assert mount["token"].access_token == "ya29.access"
    assert mount["token"].refresh_token == "1//refresh"
    assert mount["token"].expiry == "2026-11-25T13:00:00Z"
    assert mount["token"].token_type == "Bearer"
    assert record.cloud_storage == ["google_drive"]
    # Mounting again does not list the provider twice.
    assert (await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)).status_code
    assert record.cloud_storage == ["google_drive"]


async def test_mount_failure_is_406_with_its_message(api: Api, client: Client) -> None:
    from fractal_hostd.cloud_storage.mounts import MountFailed

    record = await api.add_container(PORT)
    assert api.cloud_storage is not None
    api.cloud_storage.fail_with = MountFailed("rclone: Failed to create file system")
    answer = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    assert answer.status_code == 406
    assert await _json(answer) == {
        "result": None,
        "error": "rclone: Failed to create file system",
    }
    assert record.cloud_storage == []


async def test_container_dying_during_the_mount_is_unmounted_and_406(
    api: Api, client: Client
) -> None:
    record = await api.add_container(PORT)
    assert api.cloud_storage is not None

    async def die() -> None:
        await api.lifecycle.on_gone(record.id)

    api.cloud_storage.during_mount = die
    answer = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    assert answer.status_code == 406
    assert (await _json(answer))["error"] == f"no container with host port {PORT}"
    assert api.cloud_storage.unmounted == [(PORT, record.id)]
    assert api.cloud_storage.mounted == {}


async def test_container_dying_during_the_mount_spares_the_mount_of_its_ports_next_container(
    api: Api, client: Client
) -> None:
    # Docker gives the port to a new container while the old one's mount is still running;
    # the new container mounts its Dropbox. The old request's clean-up must not take it away.
    old = await api.add_container(PORT, id="a" * 64)
    cloud = api.cloud_storage
    assert cloud is not None

    async def die_and_reuse_the_port() -> None:
        cloud.during_mount = None
        await api.lifecycle.on_gone(old.id)
        new = await api.add_container(PORT, id="b" * 64)
        answer = await client.post(
            "/mount_cloud_storage", json={**MOUNT_BODY, "provider": "dropbox"}, headers=AUTH
        )
        assert answer.status_code == 200
        assert new.cloud_storage == ["dropbox"]

    cloud.during_mount = die_and_reuse_the_port
    answer = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)

    assert answer.status_code == 406
    assert cloud.unmounted == [(PORT, old.id)]
    assert cloud.mounted == {(PORT, "dropbox"): "b" * 64}


async def test_container_dying_while_its_mount_waits_is_not_mounted(
    api: Api, client: Client
) -> None:
    record = await api.add_container(PORT)
    cloud = api.cloud_storage
    assert cloud is not None

    async def die() -> None:
        await api.lifecycle.on_gone(record.id)

    cloud.before_turn = die
    answer = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)

    assert answer.status_code == 406
    assert (await _json(answer))["error"] == f"no container with host port {PORT}"
    assert cloud.mounts == []


async def test_container_restarted_onto_another_port_while_its_mount_waits_is_not_mounted(
    api: Api, client: Client
) -> None:
    # A restart missed while the event stream was down: the reconcile keeps the record and
    # moves its port. A request for the old port is no longer this container's.
    record = await api.add_container(PORT)
    cloud = api.cloud_storage
    assert cloud is not None

    async def restart_onto_another_port() -> None:
        moved = ContainerInfo(id=record.id, host_port=PORT + 1, running=True)
        await api.lifecycle.reconcile([moved])

    cloud.before_turn = restart_onto_another_port
    answer = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)

    assert answer.status_code == 406
    assert (await _json(answer))["error"] == f"no container with host port {PORT}"
    assert cloud.mounts == []
    assert record.cloud_storage == []


async def test_mount_while_draining_is_406(api: Api, client: Client) -> None:
    await api.add_container(PORT)
    api.state.start_draining(
        DrainNotice(
            kind="spot",
            action="terminate",
            time="2026-11-25T12:02:00Z",
            seen_at=dt.datetime.now(dt.UTC),
        )
    )
    answer = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    assert answer.status_code == 406
    assert (await _json(answer))["error"] == "host is draining"
    assert api.cloud_storage is not None
    assert api.cloud_storage.mounts == []


async def test_mount_without_cloud_storage_support_is_406(tmp_path: Path) -> None:
    api = make_api(tmp_path, with_cloud_storage=False)
    await api.add_container(PORT)
    answer = await api.app.test_client().post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    assert answer.status_code == 406
    assert (await _json(answer))["error"] == "cloud storage is not supported yet"


async def test_mount_for_an_unknown_port_is_406(
    api: Api, client: Client, autojump_clock: trio.abc.Clock
) -> None:
    answer = await client.post("/mount_cloud_storage", json=MOUNT_BODY, headers=AUTH)
    assert answer.status_code == 406
    assert (await _json(answer))["error"] == f"no container with host port {PORT}"


# --- GET /health, /status ---------------------------------------------------------------


async def test_health_needs_no_auth(client: Client) -> None:
    answer = await client.get("/health")
    assert answer.status_code == 200
    assert (await _json(answer))["status"] == "ok"


async def test_status_reports_state_and_containers(api: Api, client: Client) -> None:
    api.state.metadata = PUBLIC_METADATA
    api.state.docker.connected = True
    api.state.docker.events_processed = 12
    api.state.last_heartbeat = HeartbeatRecord(
        number=3, sent_at=dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC), ok=True
    )
    api.state.api_url = "https://127.0.0.1:4678"
    await api.add_container(PORT + 1)
    await api.add_container(PORT)
    answer = await client.get("/status", headers=AUTH)
    assert answer.status_code == 200
    status = await _json(answer)
    assert status["version"] == "9.9.9"
    assert status["environment"] == "localdev"
    assert status["api_url"] == "https://127.0.0.1:4678"
    assert status["metadata"]["instance_id"] == "i-0abc"
    assert status["draining"] is None
    assert status["docker"] == {
        "connected": True,
        "events_processed": 12,
        "reconnects": 0,
        "last_event_lag_seconds": None,
        "last_reconcile_at": None,
        "last_reconcile_duration_seconds": None,
        "reconcile_failures": 0,
    }
    assert [c["host_port"] for c in status["containers"]] == [PORT, PORT + 1]
    assert status["containers"][0]["tty"] == 11
    assert status["free_ttys"] == 54 - 2
    assert status["last_heartbeat"] == {
        "number": 3,
        "sent_at": "2026-11-25T12:00:00+00:00",
        "ok": True,
        "dying": False,
    }


async def test_status_shows_draining(api: Api, client: Client) -> None:
    seen = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    api.state.start_draining(DrainNotice(kind="rebalance", action=None, time="t", seen_at=seen))
    status = await _json(await client.get("/status", headers=AUTH))
    assert status["draining"] == {
        "kind": "rebalance",
        "action": None,
        "time": "t",
        "seen_at": seen.isoformat(),
        "reason": None,
    }


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/set_container_dpi"),
        ("PUT", "/set_container_start_values"),
        ("POST", "/mount_cloud_storage"),
        ("GET", "/status"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ],
)
async def test_every_authenticated_endpoint_refuses_without_credentials(
    client: Client, method: str, path: str
) -> None:
    answer = await client.open(path, method=method, json={"host_port": PORT, "dpi": 96})
    assert answer.status_code == 401
    assert await _json(answer) == {"error": "unauthorized"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dpi": 96}, "host_port"),
        ({"host_port": "40000", "dpi": 96}, "host_port"),
        ({"host_port": 40000.5, "dpi": 96}, "host_port"),
        ({"host_port": True, "dpi": 96}, "host_port"),
        ({"host_port": 0, "dpi": 96}, "host_port"),
        ({"host_port": 65536, "dpi": 96}, "host_port"),
        ({"host_port": PORT}, "dpi"),
        ({"host_port": PORT, "dpi": 0}, "dpi"),
        ({"host_port": PORT, "dpi": 1001}, "dpi"),
        ({"host_port": PORT, "dpi": None}, "dpi"),
        ({"host_port": PORT, "dpi": [96]}, "dpi"),
    ],
)
async def test_invalid_dpi_request_is_400_naming_the_field(
    api: Api, client: Client, body: dict[str, Any], field: str
) -> None:
    await api.add_container(PORT)
    answer = await client.put("/set_container_dpi", json=body, headers=AUTH)
    assert answer.status_code == 400
    assert field in (await _json(answer))["error"]
    assert not api.mapping_file(PORT, "DPI").exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"provider": "onedrive"}, "provider"),
        ({"provider": None}, "provider"),
        ({"access_token": ""}, "access_token"),
        ({"access_token": "x" * 8193}, "access_token"),
        ({"refresh_token": 5}, "refresh_token"),
        ({"expiry": None}, "expiry"),
        ({"token_type": "x" * 65}, "token_type"),
        ({"client_id": 12}, "client_id"),
        ({"client_secret": "\x00"}, "client_secret"),
        ({"host_port": -1}, "host_port"),
    ],
)
async def test_invalid_mount_request_is_400_naming_the_field(
    api: Api, client: Client, change: dict[str, Any], field: str
) -> None:
    await api.add_container(PORT)
    answer = await client.post("/mount_cloud_storage", json={**MOUNT_BODY, **change}, headers=AUTH)
    assert answer.status_code == 400
    error = (await _json(answer))["error"]
    assert field in error
    assert "x" * 10 not in error  # the value is never echoed


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[1, 2]",
        b'"text"',
        b"null",
        b"\xff\xfe",
        b'{"host_port": NaN}',
        b"[" * 100_000,
        b'{"host_port": 1' + b"0" * 5000 + b"}",
    ],
)
async def test_malformed_body_is_400(client: Client, raw: bytes) -> None:
    answer = await client.put("/set_container_dpi", data=raw, headers=AUTH)
    # b"[" * 100_000 is over the 64 KiB limit, which wins.
    assert answer.status_code == (413 if len(raw) > 65536 else 400)
    assert "error" in await _json(answer)


async def test_invalid_start_values_arn_is_400(api: Api, client: Client) -> None:
    await api.add_container(PORT)
    for arn in ("two\nlines", "x" * 2049, 7):
        answer = await client.put(
            "/set_container_start_values",
            json={"host_port": PORT, "dpi": 96, "container_ARN": arn},
            headers=AUTH,
        )
        assert answer.status_code == 400
        assert "container_ARN" in (await _json(answer))["error"]


async def test_unknown_path_is_json_404(client: Client) -> None:
    answer = await client.get("/set_container_dpi/../../etc/passwd", headers=AUTH)
    assert answer.status_code == 404
    assert await _json(answer) == {"error": "not found"}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/set_container_dpi", "PUT"),
        ("POST", "/set_container_start_values", "PUT"),
        ("PUT", "/mount_cloud_storage", "POST"),
        ("DELETE", "/health", "GET"),
        ("OPTIONS", "/status", "GET"),
    ],
)
async def test_wrong_method_is_json_405_with_allow(
    client: Client, method: str, path: str, allowed: str
) -> None:
    # quart's TestClientProtocol.open lacks the json default its implementation has.
    answer = await client.open(path, method=method, headers=AUTH)  # type: ignore[call-arg]
    assert answer.status_code == 405
    assert await _json(answer) == {"error": "method not allowed"}
    assert allowed in answer.headers["Allow"]


async def test_body_over_64_kib_is_json_413(api: Api, client: Client) -> None:
    await api.add_container(PORT)
    body = json.dumps({"host_port": PORT, "dpi": 96, "pad": "x" * 65536}).encode()
    answer = await client.put("/set_container_dpi", data=body, headers=AUTH)
    assert answer.status_code == 413
    assert await _json(answer) == {"error": "request body over 64 KiB"}
    assert not api.mapping_file(PORT, "DPI").exists()
    # Just under the limit is fine.
    body = json.dumps({"host_port": PORT, "dpi": 96, "pad": "x" * 60000}).encode()
    assert (await client.put("/set_container_dpi", data=body, headers=AUTH)).status_code == 200


async def test_a_bug_is_a_logged_json_500(
    api: Api, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    await api.add_container(PORT)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    api.lifecycle.set_start_values = broken  # type: ignore[method-assign,assignment]
    answer = await client.put(
        "/set_container_dpi", json={"host_port": PORT, "dpi": 96}, headers=AUTH
    )
    assert answer.status_code == 500
    assert await _json(answer) == {"error": "internal error"}
    assert any(r.exc_info and "disk on fire" in str(r.exc_info[1]) for r in caplog.records)


async def test_request_log_has_no_body_or_credentials(
    api: Api, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    await api.add_container(PORT)
    await client.post(
        "/mount_cloud_storage", json={**MOUNT_BODY, "auth_secret": SECRET}, headers=AUTH
    )
    await client.put("/set_container_dpi", json={"host_port": PORT, "auth_secret": "wrong"})
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for secret in (SECRET, "wrong", "ya29.access", "1//refresh", "csecret"):
        assert secret not in text
    lines = [r for r in caplog.records if r.name == "fractal_hostd.api.requests"]
    assert [(r.method, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("POST", "/mount_cloud_storage", 200),
        ("PUT", "/set_container_dpi", 401),
    ]
    assert all(r.latency_ms >= 0 for r in lines)  # type: ignore[attr-defined]
    assert lines[0].container_id == container_id(PORT)  # type: ignore[attr-defined]
    assert lines[0].provider == "google_drive"  # type: ignore[attr-defined]


async def test_one_log_line_per_request_and_successful_reads_at_debug(
    api: Api, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    await api.add_container(PORT)
    caplog.clear()
    await client.get("/health")
    await client.get("/metrics", headers=AUTH)
    await client.get("/status", headers=AUTH)
    await client.put("/set_container_dpi", json={"host_port": PORT, "dpi": 96}, headers=AUTH)
    await client.get("/status")  # 401
    levels = [
        (r.levelname, r.__dict__.get("path"))
        for r in caplog.records
        if r.name.startswith("fractal_hostd.api")
    ]
    assert levels == [
        ("DEBUG", "/health"),
        ("DEBUG", "/metrics"),
        ("DEBUG", "/status"),
        ("INFO", "/set_container_dpi"),
        ("INFO", "/status"),
    ]
