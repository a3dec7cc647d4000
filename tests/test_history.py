"""Recent history in GET /status (issue 13 item 4): per-container transitions from the real
event stream (fake Docker Engine) and the API, the gone ring, the error ring; all bounded.

Rules: unix sockets under /tmp (fixtures), an absolute `trio.fail_after` around I/O.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from fractal_hostd.docker.client import DockerClient
from fractal_hostd.history import ERRORS_KEPT, GONE_KEPT, PER_CONTAINER, ContainerHistory, ErrorRing
from fractal_hostd.process.logs import register_secret
from tests.api_fixtures import AUTH, make_api
from tests.docker_fixtures import event_stream_running, fake_client, fake_docker
from tests.fakes.docker_engine import FakeDockerEngine

__all__ = ["fake_client", "fake_docker"]


async def _wait_for(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.005)


async def _json(response: Any) -> Any:
    return json.loads(await response.get_data())


async def test_status_shows_each_containers_transitions_and_the_gone_ones(
    fake_docker: FakeDockerEngine, fake_client: DockerClient, tmp_path: Path
) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    adopted = fake_docker.run("fhtest-adopted")  # running before the stream: found by adoption
    with trio.fail_after(20):
        async with event_stream_running(
            fake_client, api.lifecycle, api.state.docker, unreachable_budget=60.0
        ):
            started = fake_docker.run("fhtest-started")
            await _wait_for(lambda: api.registry.get(started) is not None)
            record = api.registry.get(started)
            assert record is not None
            dpi = await client.put(
                "/set_container_dpi", json={"host_port": record.host_port, "dpi": 144}, headers=AUTH
            )
            assert dpi.status_code == 200
            mount = {
                "host_port": record.host_port,
                "provider": "dropbox",
                "access_token": "at",
                "refresh_token": "rt",
                "expiry": "2030-01-01T00:00:00Z",
                "token_type": "bearer",
            }
            assert (
                await client.post("/mount_cloud_storage", json=mount, headers=AUTH)
            ).status_code == 200

            status = await _json(await client.get("/status", headers=AUTH))
            by_id = {c["id"]: c for c in status["containers"]}
            events = [(t["event"], t.get("detail")) for t in by_id[started]["history"]]
            assert events == [
                ("seen", "start event"),
                ("tty assigned", f"tty {record.tty}"),
                ("files written", None),
                ("dpi set", "dpi 144"),
                ("mounted", "dropbox"),
            ]
            times = [dt.datetime.fromisoformat(t["at"]) for t in by_id[started]["history"]]
            assert times == sorted(times)
            assert [t["event"] for t in by_id[adopted]["history"]] == [
                "seen",
                "tty assigned",
                "files written",
            ]
            assert by_id[adopted]["history"][0]["detail"] == "reconcile"

            fake_docker.kill(started)
            await _wait_for(lambda: api.registry.get(started) is None)
            await _wait_for(lambda: api.state.docker.events_processed >= 2)
            status = await _json(await client.get("/status", headers=AUTH))
    assert [c["id"] for c in status["containers"]] == [adopted]
    gone = status["recently_gone"]
    assert [g["id"] for g in gone] == [started]
    assert gone[0]["host_port"] == record.host_port
    assert [t["event"] for t in gone[0]["transitions"]][-1] == "died"


def test_the_rings_are_bounded() -> None:
    live: list[Any] = []
    history = ContainerHistory(lambda: live)
    for number in range(PER_CONTAINER * 3):
        history.record("a", "dpi set", f"dpi {number}")
    kept = history.transitions("a")
    assert len(kept) == PER_CONTAINER
    assert kept[-1]["detail"] == f"dpi {PER_CONTAINER * 3 - 1}"  # the newest are kept
    for number in range(GONE_KEPT + 5):
        history.record(f"c{number}", "dpi set")
        history.reconcile_done(0.01, ok=True)  # none of them is live: all gone
    gone = history.gone()
    assert len(gone) == GONE_KEPT
    assert gone[0]["id"] == f"c{GONE_KEPT + 4}"  # newest first


def test_the_error_ring_keeps_the_last_errors_redacted() -> None:
    ring = ErrorRing()
    logger = logging.getLogger("fractal_hostd.test_history")
    logger.addHandler(ring)
    try:
        secret = "history-secret-0123456789"
        register_secret(secret)
        logger.warning("only a warning")
        for number in range(ERRORS_KEPT + 3):
            logger.error("write %d failed with token %s", number, secret)
        try:
            raise OSError("disk full")
        except OSError:
            logger.exception("files could not be written")
    finally:
        logger.removeHandler(ring)
    errors = ring.records()
    assert len(errors) == ERRORS_KEPT
    assert all(e["level"] == "error" for e in errors)
    assert secret not in json.dumps(errors)
    assert errors[-2]["message"].startswith(f"write {ERRORS_KEPT + 2} failed with token ")
    assert errors[-1]["message"] == "files could not be written (OSError)"
    assert errors[-1]["logger"] == "fractal_hostd.test_history"


async def test_status_lists_the_services_recent_errors(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    logging.getLogger("fractal_hostd.test_history").error("something broke: %s", "badly")
    status = await _json(await api.app.test_client().get("/status", headers=AUTH))
    assert status["recent_errors"][-1]["message"] == "something broke: badly"
