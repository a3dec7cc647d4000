"""GET /metrics (Prometheus exposition), GET /openapi.json, and the Sentry scrubbing."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fractal_hostd.api.app import _scrub_event
from fractal_hostd.hoststate import DrainNotice, HeartbeatRecord
from tests.api_fixtures import AUTH, make_api

PORT = 40000


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_expose_state_counters_and_request_stats(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    await api.add_container(PORT)
    await api.add_container(PORT + 1)
    await client.put("/set_container_dpi", json={"host_port": PORT, "dpi": 96}, headers=AUTH)
    await client.put("/set_container_dpi", json={"host_port": PORT, "dpi": "x"}, headers=AUTH)
    await client.get("/nowhere")
    api.state.docker.events_processed = 7
    api.state.docker.reconnects = 2
    api.state.docker.connected = True
    api.state.last_heartbeat = HeartbeatRecord(
        number=1, sent_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), ok=True
    )
    api.metrics.heartbeats.labels(result="ok").inc()
    api.metrics.heartbeats.labels(result="failed").inc(2)
    api.state.start_draining(
        DrainNotice(kind="spot", action="stop", time="t", seen_at=dt.datetime.now(dt.UTC))
    )

    answer = await client.get("/metrics", headers=AUTH)
    assert answer.status_code == 200
    assert answer.mimetype == "text/plain"
    # The exact type docs/api.md names (prometheus-client's CONTENT_TYPE_LATEST).
    assert answer.headers["Content-Type"] == "text/plain; version=1.0.0; charset=utf-8"
    samples = _samples(await answer.get_data(as_text=True))
    expected = {
        ("fractal_hostd_managed_containers", ()): 2,
        ("fractal_hostd_ready_containers", ()): 1,
        ("fractal_hostd_free_ttys", ()): 52,
        ("fractal_hostd_draining", ()): 1,
        ("fractal_hostd_docker_connected", ()): 1,
        ("fractal_hostd_docker_events_processed_total", ()): 7,
        ("fractal_hostd_docker_stream_reconnects_total", ()): 2,
        ("fractal_hostd_last_heartbeat_timestamp_seconds", ()): 1767225600,
        ("fractal_hostd_heartbeats_total", (("result", "ok"),)): 1,
        ("fractal_hostd_heartbeats_total", (("result", "failed"),)): 2,
        (
            "fractal_hostd_api_requests_total",
            (("endpoint", "/set_container_dpi"), ("status", "200")),
        ): 1,
        (
            "fractal_hostd_api_requests_total",
            (("endpoint", "/set_container_dpi"), ("status", "400")),
        ): 1,
        ("fractal_hostd_api_requests_total", (("endpoint", "unmatched"), ("status", "404"))): 1,
        (
            "fractal_hostd_api_request_duration_seconds_count",
            (("endpoint", "/set_container_dpi"),),
        ): 2,
    }
    for key, value in expected.items():
        assert samples[key] == value, key


async def test_metrics_gauges_follow_the_state_at_scrape_time(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    first = _samples(await (await client.get("/metrics", headers=AUTH)).get_data(as_text=True))
    assert first[("fractal_hostd_managed_containers", ())] == 0
    assert first[("fractal_hostd_draining", ())] == 0
    assert ("fractal_hostd_last_heartbeat_timestamp_seconds", ()) not in first
    await api.add_container(PORT)
    second = _samples(await (await client.get("/metrics", headers=AUTH)).get_data(as_text=True))
    assert second[("fractal_hostd_managed_containers", ())] == 1


def test_tracking_again_replaces_the_sources(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    api.metrics.track(state=api.state, containers=api.registry)
    names = [f.name for f in api.metrics.registry.collect()]
    assert names.count("fractal_hostd_managed_containers") == 1


async def test_openapi_lists_exactly_the_app_routes(tmp_path: Path) -> None:
    api = make_api(tmp_path)
    client = api.app.test_client()
    assert (await client.get("/openapi.json")).status_code == 401
    answer = await client.get("/openapi.json", headers=AUTH)
    assert answer.status_code == 200
    document: dict[str, Any] = json.loads(await answer.get_data())
    assert document["openapi"].startswith("3.")
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    served = {
        (rule.rule, method)
        for rule in api.app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    assert documented == served
    # Every $ref points at a schema that exists.
    text = json.dumps(document)
    for name in ("Error", "NotCarriedOut", "Container", "Status"):
        assert f"#/components/schemas/{name}" in text
        assert name in document["components"]["schemas"]


def test_sentry_events_lose_bodies_and_credentials() -> None:
    event: Any = {
        "request": {
            "url": "https://host/set_container_dpi",
            "data": {"auth_secret": "s"},
            "query_string": "auth_secret=s",
            "cookies": {"a": "b"},
            "headers": {"Authorization": "Bearer s", "User-Agent": "ua", "Cookie": "a=b"},
        }
    }
    scrubbed = _scrub_event(event, {})
    assert scrubbed["request"] == {
        "url": "https://host/set_container_dpi",
        "headers": {"User-Agent": "ua"},
    }


async def test_each_request_runs_in_its_own_sentry_isolation_scope(tmp_path: Path) -> None:
    import sentry_sdk

    api = make_api(tmp_path)
    seen: list[object] = []

    @api.app.before_request
    async def remember_scope() -> None:
        scope = sentry_sdk.get_isolation_scope()
        scope.set_tag("request_tag", len(seen))
        seen.append(scope)

    client = api.app.test_client()
    outer = sentry_sdk.get_isolation_scope()
    await client.get("/health")
    await client.get("/health")
    assert len({id(scope) for scope in seen}) == 2
    assert all(scope is not outer for scope in seen)
    assert "request_tag" not in outer._tags


async def test_request_scope_has_the_scrubber_and_none_of_the_outer_breadcrumbs(
    tmp_path: Path,
) -> None:
    import sentry_sdk

    api = make_api(tmp_path)
    seen: list[Any] = []

    @api.app.before_request
    async def remember_scope() -> None:
        scope = sentry_sdk.get_isolation_scope()
        seen.append((list(scope._event_processors), list(scope._breadcrumbs)))
        scope._breadcrumbs.append({"message": "inside a request"})

    outer = sentry_sdk.get_isolation_scope()
    outer._breadcrumbs.append({"message": "start-up, before any request"})
    try:
        client = api.app.test_client()
        await client.get("/health")
        await client.get("/health")
    finally:
        outer._breadcrumbs.clear()
    # Each request: the scrubber as a last line of defence, and an empty trail (neither the
    # outer scope's nor the previous request's breadcrumbs).
    assert [processors for processors, _ in seen] == [[_scrub_event], [_scrub_event]]
    assert [crumbs for _, crumbs in seen] == [[], []]
