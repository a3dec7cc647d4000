"""Sentry set-up, scrubbing, crash reports and the bounded flush, against a real local receiver.

Rules: loopback only, port 0, an absolute trio.fail_after around every test that does I/O.
sentry-sdk is process-wide state: every test resets it (tests.fakes.sentry.reset_sentry).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentry_sdk
import trio
from sentry_sdk.integrations.stdlib import StdlibIntegration

from fractal_hostd.process import logs, telemetry
from fractal_hostd.process.logs import FILTERED
from tests.api_fixtures import AUTH, make_api
from tests.fakes.sentry import FakeSentry, parse_envelope, reset_sentry, running_fake_sentry
from tests.instance_fixtures import PUBLIC_METADATA as METADATA
from tests.logging_fixtures import restore_logging  # noqa: F401 (autouse)

# Made at run time: source lines in tracebacks are not scrubbed (by design: runtime secrets are
# never in our source), so a literal here would show up in the events as source context.
SECRET = "s3cr3t-" + uuid.uuid4().hex
REGISTERED = "registered-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_sentry() -> Iterator[None]:
    yield
    reset_sentry()
    logs.forget_registered_secrets()


def start(sentry: FakeSentry) -> None:
    assert telemetry.init_sentry(
        dsn=sentry.dsn, enabled=True, environment="staging", release="9.9.9"
    )


def everything_received(sentry: FakeSentry) -> str:
    return json.dumps([[item.payload for item in e.items] for e in sentry.envelopes], default=repr)


# --- initialisation --------------------------------------------------------------------------


def test_disabled_or_without_dsn_starts_nothing() -> None:
    assert not telemetry.init_sentry(
        dsn="http://k@127.0.0.1:9/1", enabled=False, environment="dev", release="1"
    )
    assert not telemetry.init_sentry(dsn=None, enabled=True, environment="dev", release="1")
    assert not sentry_sdk.get_client().is_active()


def test_bad_dsn_names_the_variable_not_the_value() -> None:
    with pytest.raises(ValueError, match="SENTRY_DSN") as info:
        telemetry.init_sentry(
            dsn=f"https://{SECRET}@", enabled=True, environment="dev", release="1"
        )
    assert SECRET not in str(info.value)


def test_client_options() -> None:
    assert telemetry.init_sentry(
        dsn="http://k@127.0.0.1:9/1", enabled=True, environment="prod", release="1.2"
    )
    client = sentry_sdk.get_client()
    assert client.options["environment"] == "prod"
    assert client.options["release"] == "1.2"
    assert client.options["trace_propagation_targets"] == []
    assert client.options["include_local_variables"] is False
    assert not client.should_send_default_pii()
    assert type(client.transport).__name__ == "HttpTransport"  # the thread transport
    assert {"httpx", "flask", "argv", "quart"}.isdisjoint(client.integrations)
    assert client.options["auto_enabling_integrations"] is False  # probing cost 160 ms
    assert "logging" in client.integrations


def test_release_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(telemetry.GIT_COMMIT_ENV, "5EC0961A1B2C3D4E5F60718293A4B5C6D7E8F901")
    assert telemetry.release_name("0.1.0") == "0.1.0+g5ec0961a1b2c"
    monkeypatch.setenv(telemetry.GIT_COMMIT_ENV, "not-a-commit")
    assert telemetry.release_name("0.1.0") == "0.1.0"
    monkeypatch.delenv(telemetry.GIT_COMMIT_ENV)
    assert telemetry.git_commit(tmp_path) is None  # not a checkout
    assert telemetry.release_name("0.1.0", commit="abcdef0") == "0.1.0+gabcdef0"


def test_git_commit_of_a_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(telemetry.GIT_COMMIT_ENV, raising=False)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    assert telemetry.git_commit(tmp_path) == head.stdout.strip()[:12]


# --- events ----------------------------------------------------------------------------------


def crash_in_a_child() -> None:
    raise RuntimeError("docker said no")


async def test_capture_crash_one_fatal_event_with_the_real_traceback() -> None:
    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            telemetry.set_instance_tags(METADATA)
            try:
                async with trio.open_nursery() as outer, trio.open_nursery() as inner:
                    inner.start_soon(trio.to_thread.run_sync, crash_in_a_child)
                    outer.start_soon(trio.sleep_forever)
            except BaseExceptionGroup as group:
                telemetry.capture_crash(group)
            (event,) = await sentry.wait_for_events(1)
    assert event["level"] == "fatal"
    assert event["environment"] == "staging"
    assert event["release"] == "9.9.9"
    (exc,) = event["exception"]["values"]  # the groups trio wrapped it in are peeled off
    assert exc["type"] == "RuntimeError"
    assert exc["value"] == "docker said no"
    assert exc["mechanism"] == {"type": "fractal_hostd.shutdown", "handled": False}
    functions = [frame["function"] for frame in exc["stacktrace"]["frames"]]
    assert functions[-1] == "crash_in_a_child"
    assert event["tags"] == {
        "aws.instance-id": "i-0abc",
        "aws.instance-type": "g4dn.xlarge",
        "aws.region": "us-east-1",
        "aws.ami-id": "ami-0123",
        "aws.public-ipv4": "203.0.113.7",
    }


async def test_a_real_exception_group_stays_whole() -> None:
    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            telemetry.capture_crash(ExceptionGroup("two", [ValueError("a"), KeyError("b")]))
            (event,) = await sentry.wait_for_events(1)
    types = {value["type"] for value in event["exception"]["values"]}
    assert types == {"ExceptionGroup", "ValueError", "KeyError"}


async def test_capture_warning_with_context() -> None:
    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            telemetry.capture_warning("host is draining", kind="spot", refresh_token=SECRET)
            sentry_sdk.capture_message("later")
            first, later = await sentry.wait_for_events(2)
    assert first["level"] == "warning"
    assert first["message"] == "host is draining"
    assert first["contexts"]["details"] == {"kind": "spot", "refresh_token": FILTERED}
    assert "details" not in later.get("contexts", {})  # the context stayed in its scope


async def test_error_logs_are_events_warnings_are_breadcrumbs() -> None:
    log = logging.getLogger("fractal_hostd.containers")
    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            log.warning("heartbeat failed", extra={"status": 503})
            log.error("no free TTY for container %s", "c1", extra={"container_id": "c1"})
            log.error("crash, reported separately", extra={logs.NO_SENTRY_EVENT: True})
            sentry_sdk.capture_message("marker")
            events = await sentry.wait_for_events(2)
    tty, marker = events
    assert tty["level"] == "error"
    assert tty["logentry"]["message"] == "no free TTY for container %s"  # groups by template
    assert tty["extra"]["container_id"] == "c1"
    crumbs = [c["message"] for c in marker["breadcrumbs"]["values"]]
    assert crumbs == [
        "heartbeat failed",
        "no free TTY for container c1",
        "crash, reported separately",
    ]


async def test_an_api_bug_is_an_event_naming_the_request_without_its_body(
    tmp_path: Path,
) -> None:
    """Without sentry's Quart integration (per-request middleware: 13 % of a request's CPU),
    the app's error handler still reports a handler's exception, with method and path."""
    api = make_api(tmp_path)
    await api.add_container(40000)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    api.lifecycle.set_start_values = broken  # type: ignore[method-assign,assignment]
    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            answer = await api.app.test_client().put(
                "/set_container_dpi", json={"host_port": 40000, "dpi": 96}, headers=AUTH
            )
            assert answer.status_code == 500
            [event] = await sentry.wait_for_events(1)
    assert event["logentry"]["message"] == "unhandled error in %s %s"
    assert event["logentry"]["params"] == ["PUT", "/set_container_dpi"]
    assert event["exception"]["values"][-1]["value"] == "disk on fire"
    assert "96" not in json.dumps(event.get("request", {}))


async def test_the_line_of_each_request_is_for_the_journal_not_a_breadcrumb(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The request line cost a request as much CPU again as the rest of its log line; the
    requests' breadcrumbs only reached the events of the scope around the API (hypercorn's
    own errors), which the error that follows a request does not need: its own event names
    the request. Every other info line stays a breadcrumb."""
    caplog.set_level(logging.INFO)
    api = make_api(tmp_path)
    await api.add_container(40000)
    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            with sentry_sdk.isolation_scope():
                answer = await api.app.test_client().put(
                    "/set_container_dpi", json={"host_port": 40000, "dpi": 96}, headers=AUTH
                )
                assert answer.status_code == 200
                logging.getLogger("fractal_hostd.api").info("another line")
                sentry_sdk.capture_message("marker")
            [event] = await sentry.wait_for_events(1)
    crumbs = [c["message"] for c in event["breadcrumbs"]["values"]]
    assert "another line" in crumbs
    assert not [c for c in crumbs if c.startswith("PUT /set_container_dpi")]
    # ... and the line is still written.
    assert [r.getMessage()[:26] for r in caplog.records if r.__dict__.get("dpi") == 96] == [
        "PUT /set_container_dpi 200"
    ]


async def test_task_scopes_keep_tags_apart() -> None:
    async def task(name: str, ready: trio.Event, go: trio.Event) -> None:
        with telemetry.task_scope(name):
            sentry_sdk.set_tag("seen_by", name)
            ready.set()
            await go.wait()
            sentry_sdk.capture_message(f"from {name}")

    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            go = trio.Event()
            async with trio.open_nursery() as nursery:
                for name in ("heartbeat", "docker-events"):
                    ready = trio.Event()
                    nursery.start_soon(task, name, ready, go)
                    await ready.wait()
                go.set()
            sentry_sdk.capture_message("from the root")
            events = await sentry.wait_for_events(3)
    tags = {e["message"]: e.get("tags", {}) for e in events}
    assert tags["from heartbeat"] == {"task": "heartbeat", "seen_by": "heartbeat"}
    assert tags["from docker-events"] == {"task": "docker-events", "seen_by": "docker-events"}
    assert tags["from the root"] == {}


# --- scrubbing -------------------------------------------------------------------------------


def test_scrub_event_masks_secrets_everywhere() -> None:
    event: dict[str, Any] = {
        "message": f"handshake answered token={SECRET}",
        "logentry": {"message": "got %s", "params": [f"Bearer {SECRET}"]},
        "exception": {
            "values": [
                {
                    "type": "MountFailed",
                    "value": f"rclone: {{'access_token': '{SECRET}'}}",
                    "stacktrace": {
                        "frames": [
                            {
                                "function": "mount",
                                "context_line": "    secret = load_secret(path)",
                                "pre_context": ["token = x"],
                                "vars": {"client_secret": SECRET, "host_port": 1},
                            }
                        ]
                    },
                }
            ]
        },
        "request": {
            "url": "https://127.0.0.1:4678/mount_cloud_storage",
            "method": "POST",
            "headers": {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
            "cookies": {"session": SECRET},
            "data": {"host_port": 1, "note": "whatever the body holds"},
            "query_string": f"x=1&access_token={SECRET}",
        },
        "extra": {
            "auth_secret": SECRET,
            "container_id": "c1",
            "env": f"SENTRY_DSN=https://{SECRET}@x/1",
        },
        "contexts": {"details": {"refresh_token": SECRET, "kind": "spot"}},
        "breadcrumbs": {
            "values": [{"message": f"Authorization: Bearer {SECRET}", "data": {"password": SECRET}}]
        },
        "tags": {"aws.instance-id": "i-1"},
        "user": {"ip_address": "1.2.3.4", "id": SECRET},
        "modules": {"google-auth": "2.0"},
    }
    scrubbed = telemetry.scrub_event(event, {})  # type: ignore[arg-type]  # plain dict
    assert scrubbed is not None
    assert SECRET not in json.dumps(scrubbed)
    assert scrubbed["request"]["data"] == FILTERED
    assert scrubbed["request"]["headers"] == {
        "Authorization": FILTERED,
        "Content-Type": "application/json",
    }
    assert scrubbed["request"]["cookies"] == FILTERED
    assert scrubbed["request"]["url"] == "https://127.0.0.1:4678/mount_cloud_storage"
    assert scrubbed["extra"]["container_id"] == "c1"
    assert scrubbed["contexts"]["details"]["kind"] == "spot"
    frame = scrubbed["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert frame["context_line"] == "    secret = load_secret(path)"  # source code stays readable
    assert frame["vars"] == {"client_secret": FILTERED, "host_port": 1}
    assert scrubbed["modules"] == {"google-auth": "2.0"}
    assert scrubbed["tags"] == {"aws.instance-id": "i-1"}
    assert "user" not in scrubbed


def test_scrub_breadcrumb() -> None:
    crumb = {"category": "httpx", "message": f"GET /x?token={SECRET}", "data": {"cookie": SECRET}}
    assert telemetry.scrub_breadcrumb(crumb, {}) == {
        "category": "httpx",
        "message": f"GET /x?token={FILTERED}",
        "data": {"cookie": FILTERED},
    }


async def test_no_secret_reaches_the_receiver() -> None:
    log = logging.getLogger("fractal_hostd.api")
    logs.register_secret(REGISTERED)
    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            sentry_sdk.set_tag("note", REGISTERED)
            log.info("request body %s", {"access_token": SECRET})
            log.error("mount failed", extra={"client_secret": SECRET, "refresh_token": SECRET})
            try:
                raise RuntimeError(f"webserver answered Authorization: Bearer {SECRET}")
            except RuntimeError as exc:
                telemetry.capture_crash(exc)
            await sentry.wait_for_events(2)
    received = everything_received(sentry)
    assert SECRET not in received
    assert REGISTERED not in received
    assert FILTERED in received


# --- no trace headers on our requests --------------------------------------------------------


async def record_request_headers(stream: trio.SocketStream, seen: list[dict[str, str]]) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            return
        data += chunk
    lines = data.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
    seen.append({k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)})
    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


async def requests_through(nursery: trio.Nursery) -> tuple[str, list[dict[str, str]]]:
    seen: list[dict[str, str]] = []
    handler = functools.partial(record_request_headers, seen=seen)
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}/", seen


async def send_both_kinds(url: str) -> None:
    with sentry_sdk.start_transaction(name="t", sampled=True):
        async with httpx.AsyncClient() as client:
            await client.get(url)
        await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=5).read())


async def test_no_trace_headers_on_outgoing_requests() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url, seen = await requests_through(nursery)
            assert telemetry.init_sentry(
                dsn="http://k@127.0.0.1:9/1", enabled=True, environment="dev", release="1"
            )
            await send_both_kinds(url)
            nursery.cancel_scope.cancel()
    assert len(seen) == 2  # httpx, then urllib (sentry's stdlib integration)
    for headers in seen:
        assert "sentry-trace" not in headers
        assert "baggage" not in headers


async def test_control_default_options_would_send_trace_headers() -> None:
    """Proves the recorder above sees trace headers when sentry-sdk adds them.

    With urllib (sentry's stdlib integration): once an integration is disabled in a process,
    sentry-sdk never installs it later, so an httpx control would depend on test order.
    """
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url, seen = await requests_through(nursery)
            sentry_sdk.init(
                dsn="http://k@127.0.0.1:9/1",
                default_integrations=False,
                auto_enabling_integrations=False,
                integrations=[StdlibIntegration()],
            )
            with sentry_sdk.start_transaction(name="t", sampled=True):
                await trio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=5).read())
            nursery.cancel_scope.cancel()
    assert "sentry-trace" in seen[0]


# --- bounded flush ---------------------------------------------------------------------------


async def test_flush_and_close_delivers_and_closes() -> None:
    with trio.fail_after(10):
        async with running_fake_sentry() as sentry:
            start(sentry)
            for n in range(5):
                sentry_sdk.capture_message(f"m{n}")
            await telemetry.flush_and_close()
            assert len(sentry.events) == 5  # all there when flush returns
            assert sentry_sdk.get_client().transport is None
            await telemetry.flush_and_close()  # a second call is harmless


async def test_flush_is_bounded_by_the_callers_scope_when_sentry_hangs() -> None:
    ticks = 0

    async def event_loop_keeps_running() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0.01)

    with trio.fail_after(20):
        async with running_fake_sentry(blackhole=True) as sentry:
            start(sentry)
            sentry_sdk.capture_message("never answered")
            await sentry.wait_for_requests(1)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(event_loop_keeps_running)
                with trio.move_on_after(0.5) as scope:
                    await telemetry.flush_and_close()
                nursery.cancel_scope.cancel()
            assert scope.cancelled_caught
            assert ticks > 1
            # What sentry-sdk's atexit hook does: close with its callback. The callback is only
            # called when close would wait for pending events; it must not be.
            waited: list[int] = []
            client = sentry_sdk.get_client()
            await trio.to_thread.run_sync(
                lambda: client.close(callback=lambda n, t: waited.append(n))
            )
            assert waited == []


EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, trio, sentry_sdk
    from fractal_hostd.process import telemetry

    async def main():
        telemetry.init_sentry(dsn=sys.argv[1], enabled=True, environment="dev", release="1")
        sentry_sdk.capture_message("pending forever")
        with trio.move_on_after(0.3):
            await telemetry.flush_and_close()

    trio.run(main)
    print("exiting", flush=True)
    """
)


async def test_process_exit_adds_no_atexit_wait() -> None:
    """The real atexit hook: it announces any wait on stderr ("attempting to send")."""
    with trio.fail_after(30):
        async with running_fake_sentry(blackhole=True) as sentry:
            done = await trio.run_process(
                [sys.executable, "-c", EXIT_SCRIPT, sentry.dsn],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"exiting\n"
    assert b"attempting to send" not in done.stderr
    assert sentry.requests_seen >= 1


# --- the fake itself ---------------------------------------------------------------------------


def test_parse_envelope_with_and_without_length() -> None:
    body = (
        b'{"event_id":"e1"}\n'
        b'{"type":"event","length":13}\n{"level":"x"}\n'
        b'{"type":"attachment","length":3}\nab\n\n'
        b'{"type":"client_report"}\n{"discarded_events":[]}'
    )
    headers, items = parse_envelope(body)
    assert headers == {"event_id": "e1"}
    assert [item.headers["type"] for item in items] == ["event", "attachment", "client_report"]
    assert items[0].payload == {"level": "x"}
    assert items[1].payload == b"ab\n"
    assert items[2].payload == {"discarded_events": []}


def test_a_breadcrumb_of_a_record_the_log_filter_redacted_is_not_scrubbed_twice() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", (SECRET,), None)
    record.refresh_token = SECRET
    # Not through the filter (a logger whose records never reach our handler): scrubbed here.
    crumb = {"message": f"token={SECRET}", "data": {"refresh_token": SECRET}}
    assert telemetry.scrub_breadcrumb(crumb, {"log_record": record}) == {
        "message": f"token={FILTERED}",
        "data": {"refresh_token": FILTERED},
    }
    assert logs.RedactingFilter().filter(record)
    redacted = {
        "message": record.getMessage(),
        "data": {"refresh_token": record.__dict__["refresh_token"]},
    }
    assert redacted == {"message": f"token={FILTERED}", "data": {"refresh_token": FILTERED}}
    assert telemetry.scrub_breadcrumb(redacted, {"log_record": record}) is redacted


async def test_breadcrumbs_of_the_service_logs_reach_sentry_redacted() -> None:
    """With the service's handler (its filter redacts, the breadcrumb is not scrubbed again)."""
    with open(os.devnull, "w") as devnull:
        logs.setup_logging(fmt="json", level="info")
        handler = logging.getLogger().handlers[-1]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(devnull)
        log = logging.getLogger("fractal_hostd.api")
        with trio.fail_after(10):
            async with running_fake_sentry() as sentry:
                start(sentry)
                log.info("PUT with token=%s", SECRET, extra={"client_secret": SECRET, "n": 1})
                sentry_sdk.capture_message("marker")
                [event] = await sentry.wait_for_events(1)
    [crumb] = [c for c in event["breadcrumbs"]["values"] if c["category"] == "fractal_hostd.api"]
    assert crumb["message"] == f"PUT with token={FILTERED}"
    assert crumb["data"] == {"client_secret": FILTERED, "n": 1}
    assert SECRET not in everything_received(sentry)
