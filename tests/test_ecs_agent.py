"""Tests of fractal_hostd.ecs_agent.

Rules: parsing and body-building are tested as pure functions. The `docker` tests use the
real engine on /var/run/docker.sock (skipped with the reason when it does not answer or the
test image is missing); the busybox test image stands in for the agent image, with a
command instead of the agent; containers are named `fhtest-ecs-agent-<random>` and removed
afterwards; bind sources live under tmp_path; an absolute `trio.fail_after` bounds every I/O
test. The watcher runs beside the Docker event stream it gets the deaths from (`watching`),
with a lifecycle that ignores managed containers; the fake engine (tests/fakes/docker_engine.py)
counts the `/events` subscriptions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Container, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from fractal_hostd.containers.info import ContainerInfo
from fractal_hostd.docker.client import DockerClient, DockerNotFound
from fractal_hostd.docker.events import run_event_stream
from fractal_hostd.docker.fanout import EventFanout
from fractal_hostd.ecs_agent import (
    FIXED_AGENT_ENV,
    AgentDeath,
    EcsAgentError,
    EcsAgentImageMissing,
    EcsConfigError,
    agent_container_body,
    agent_death,
    agent_environment,
    is_death_of,
    parse_ecs_config,
    read_ecs_config,
    run_ecs_agent,
    start_ecs_agent,
)
from fractal_hostd.event_priority import EventPriority
from fractal_hostd.hoststate import DockerStatus
from tests.docker_fixtures import fake_client, fake_docker, real_client
from tests.fakes.docker_engine import FakeDockerEngine
from tests.fakes.unix_proxy import running_unix_proxy
from tests.service_harness import running_peers, running_service, service_env

__all__ = ["fake_client", "fake_docker", "real_client"]

TEST_IMAGE = "fractal-hostd-test-busybox:latest"
SLEEP = ["sleep", "300"]


# --- ecs.config parsing --------------------------------------------------------------------


def test_parse_skips_comments_and_blank_lines_and_keeps_values_verbatim() -> None:
    text = (
        "\ufeff# written by userdata\n"
        "\n"
        "ECS_CLUSTER=prod-gpu\r\n"
        "   ECS_RESERVED_MEMORY=32\n"
        "  # indented comment\n"
        'ECS_AVAILABLE_LOGGING_DRIVERS=["json-file","awslogs"]\n'
        'ECS_INSTANCE_ATTRIBUTES={"stack": "prod"}  \n'
        "ECS_ENGINE_AUTH_DATA=a=b=c\n"
        "ECS_EMPTY=\n"
    )
    assert parse_ecs_config(text) == {
        "ECS_CLUSTER": "prod-gpu",
        "ECS_RESERVED_MEMORY": "32",
        "ECS_AVAILABLE_LOGGING_DRIVERS": '["json-file","awslogs"]',
        "ECS_INSTANCE_ATTRIBUTES": '{"stack": "prod"}  ',
        "ECS_ENGINE_AUTH_DATA": "a=b=c",
        "ECS_EMPTY": "",
    }


def test_parse_empty_text_is_empty_config() -> None:
    assert parse_ecs_config("") == {}
    assert parse_ecs_config("# only a comment\n\n") == {}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("ECS_CLUSTER", "expected KEY=VALUE"),
        ("=secret-value", "not a valid variable name"),
        ("ECS CLUSTER=secret-value", "not a valid variable name"),
        ("ECS_CLUSTER =secret-value", "not a valid variable name"),
        ("1ECS=secret-value", "not a valid variable name"),
        ("ECS_CLUSTER=secret\0value", "NUL"),
        ('ECS_CLUSTER="secret-value"', "quoted"),
        ("ECS_CLUSTER='secret-value'", "quoted"),
    ],
)
def test_parse_rejects_malformed_lines_without_showing_the_value(line: str, reason: str) -> None:
    with pytest.raises(EcsConfigError, match=reason) as caught:
        parse_ecs_config(f"# fine\nECS_OK=1\n{line}\n", source="/etc/ecs/ecs.config")
    message = str(caught.value)
    assert message.startswith("/etc/ecs/ecs.config line 3:")
    assert "secret" not in message


def test_parse_repeated_name_keeps_last_value_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="fractal_hostd.ecs_agent"):
        config = parse_ecs_config("ECS_CLUSTER=one\nECS_CLUSTER=two\n")
    assert config == {"ECS_CLUSTER": "two"}
    assert "line 2: ECS_CLUSTER is set again" in caplog.text
    assert "two" not in caplog.text


async def test_read_missing_file_is_empty_config(tmp_path: Path) -> None:
    assert await read_ecs_config(tmp_path / "absent.config") == {}


async def test_read_file(tmp_path: Path) -> None:
    path = tmp_path / "ecs.config"
    path.write_text("ECS_CLUSTER=c1\n")
    assert await read_ecs_config(path) == {"ECS_CLUSTER": "c1"}


async def test_read_undecodable_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ecs.config"
    path.write_bytes(b"ECS_CLUSTER=\xff\xfe\n")
    with pytest.raises(EcsConfigError, match="cannot read"):
        await read_ecs_config(path)


# --- environment and container body --------------------------------------------------------


def test_environment_puts_fixed_settings_last_and_they_win(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {"ECS_CLUSTER": "c1", "ECS_LOGFILE": "/elsewhere.log", "ECS_DATADIR": "/data"}
    with caplog.at_level(logging.WARNING, logger="fractal_hostd.ecs_agent"):
        env = agent_environment(config)
    as_dict = dict(item.split("=", 1) for item in env)
    assert as_dict == {"ECS_CLUSTER": "c1", **FIXED_AGENT_ENV}
    assert as_dict["ECS_ENABLE_SPOT_INSTANCE_DRAINING"] == "true"
    assert as_dict["ECS_LOGFILE"] == "/log/ecs-agent.log"
    assert "ECS_LOGFILE" in caplog.text
    assert "ECS_DATADIR" not in caplog.text  # same value: nothing to warn about


def test_container_body_follows_amazons_documented_run_command() -> None:
    body = agent_container_body(image="amazon/amazon-ecs-agent:latest", env=["A=1"])
    assert body == {
        "Image": "amazon/amazon-ecs-agent:latest",
        "Env": ["A=1"],
        "HostConfig": {
            "NetworkMode": "host",
            "Binds": [
                "/var/run:/var/run",
                "/var/log/ecs:/log",
                "/var/lib/ecs/data:/data",
                "/etc/ecs:/etc/ecs",
                "/sys/fs/cgroup:/sys/fs/cgroup",
            ],
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 10},
            "CapAdd": ["NET_ADMIN", "SYS_ADMIN"],
            "Init": True,
        },
    }


def test_container_body_with_host_root_and_command() -> None:
    body = agent_container_body(
        image="img", env=[], host_root=Path("/tmp/root"), command=["sleep", "1"]
    )
    assert body["Cmd"] == ["sleep", "1"]
    assert body["HostConfig"]["Binds"][1] == "/tmp/root/var/log/ecs:/log"


# --- die events ----------------------------------------------------------------------------


def _die_event(exit_code: str | None, *, time_nano: int = 1, action: str = "die") -> dict[str, Any]:
    attributes = {"name": "ecs-agent", "image": "img"}
    if exit_code is not None:
        attributes["exitCode"] = exit_code
    return {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": "abc123", "Attributes": attributes},
        "timeNano": time_nano,
    }


def test_agent_death_reads_the_exit_code() -> None:
    assert agent_death(_die_event("137")) == AgentDeath(container_id="abc123", exit_code=137)
    assert agent_death(_die_event(None)) == AgentDeath(container_id="abc123", exit_code=None)
    assert agent_death(_die_event("137", action="start")) is None
    assert agent_death({"Type": "network", "Action": "die"}) is None


def test_the_watcher_wants_only_deaths_of_its_container() -> None:
    wanted = is_death_of("ecs-agent")
    assert wanted(_die_event("1"))
    assert not wanted(_die_event("1", action="start"))
    assert not is_death_of("other")(_die_event("1"))
    assert not wanted({"Type": "network", "Action": "die", "Actor": {"Attributes": {}}})
    assert not wanted({"Type": "container", "Action": "die"})  # no Actor: not ours


# --- the watcher beside the event stream ---------------------------------------------------


class IgnoringLifecycle:
    """The event stream's lifecycle doing nothing: these tests are about the agent."""

    priority = EventPriority()

    async def adopt(self, running: Sequence[ContainerInfo]) -> None:
        pass

    async def reconcile(
        self, running: Sequence[ContainerInfo], *, leave_alone: Container[str] = frozenset()
    ) -> None:
        pass

    async def on_running(self, info: ContainerInfo) -> None:
        pass

    async def on_gone(self, container_id: str) -> None:
        pass

    def known_host_ports(self) -> Mapping[str, int]:
        return {}


@asynccontextmanager
async def watching(client: DockerClient, status: DockerStatus, **agent: Any) -> AsyncIterator[str]:
    """The event stream and the agent watcher, wired as the supervisor wires them; yields
    the agent's container id once both have started."""
    fanout = EventFanout()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                run_event_stream,
                client,
                IgnoringLifecycle(),
                unreachable_budget=60.0,
                status=status,
                fanout=fanout,
            )
        )
        yield await nursery.start(functools.partial(run_ecs_agent, client, events=fanout, **agent))
        nursery.cancel_scope.cancel()


def _error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "fractal_hostd.ecs_agent" and r.levelno == logging.ERROR
    ]


def _reported_exit_codes(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [r.exit_code for r in _error_records(caplog)]  # type: ignore[attr-defined]


async def _wait_until(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.02)


async def test_one_event_subscription_feeds_the_watcher_including_deaths_while_it_was_down(
    fake_docker: FakeDockerEngine,
    fake_client: DockerClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The agent already runs (a restart of the service): it is reused, so the stream has
    # handled no event yet when it first drops.
    agent = fake_docker.run("ecs-agent", image="amazon/amazon-ecs-agent:latest", publish=False)
    status = DockerStatus()
    caplog.set_level(logging.INFO)
    with trio.fail_after(20):
        async with watching(fake_client, status, image="amazon/amazon-ecs-agent:latest") as cid:
            assert cid == agent
            assert fake_docker.subscribers == 1  # one /events subscription, not one per task
            await fake_docker.stop_listening()
            await _wait_until(lambda: not status.connected)
            fake_docker.kill(agent)  # dies while the stream is down
            fake_docker.kill(fake_docker.run("fhtest-other", publish=False))  # not the agent
            await fake_docker.start_listening()
            await _wait_until(lambda: _reported_exit_codes(caplog) == [137])

            # A second drop: the replay repeats that death, which is not reported twice; a
            # death afterwards is.
            fake_docker.drop_streams()
            await _wait_until(lambda: status.reconnects == 2)
            fake_docker.start(agent)
            fake_docker.kill(agent, "TERM")
            await _wait_until(lambda: len(_reported_exit_codes(caplog)) >= 2)
            await trio.sleep(0.1)
            assert fake_docker.subscribers == 1
    assert _reported_exit_codes(caplog) == [137, 137]
    assert [r.container_id for r in _error_records(caplog)] == [agent, agent]  # type: ignore[attr-defined]
    assert _error_records(caplog)[0].getMessage() == (
        "ECS agent container ecs-agent died with exit code 137"
    )


# --- real engine ---------------------------------------------------------------------------


@pytest.fixture
async def agent_name(real_client: DockerClient) -> AsyncIterator[str]:
    name = f"fhtest-ecs-agent-{secrets.token_hex(4)}"
    yield name
    with trio.move_on_after(20, shield=True):
        with contextlib.suppress(DockerNotFound):
            await real_client.remove_container(name, force=True)


@pytest.fixture
def ecs_config(tmp_path: Path) -> Path:
    path = tmp_path / "ecs.config"
    path.write_text("ECS_CLUSTER=fhtest\nECS_LOGFILE=/somewhere-else.log\n")
    return path


def _starter(
    real_client: DockerClient, name: str, tmp_path: Path, ecs_config: Path, command: list[str]
) -> Callable[..., Any]:
    async def start(image: str = TEST_IMAGE) -> str:
        return await start_ecs_agent(
            real_client,
            image=image,
            ecs_config_path=ecs_config,
            container_name=name,
            host_root=tmp_path,
            command=command,
        )

    return start


@pytest.mark.docker
async def test_start_creates_and_runs_the_agent_container(
    real_client: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    with trio.fail_after(20):
        container_id = await _starter(real_client, agent_name, tmp_path, ecs_config, SLEEP)()
        inspect = await real_client.inspect_container(agent_name)
    assert inspect["Id"] == container_id
    assert inspect["State"]["Running"] is True
    host_config = inspect["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 10}
    assert sorted(host_config["CapAdd"]) == ["NET_ADMIN", "SYS_ADMIN"]
    assert host_config["Init"] is True
    assert f"{tmp_path}/var/lib/ecs/data:/data" in host_config["Binds"]
    env = inspect["Config"]["Env"]
    assert "ECS_CLUSTER=fhtest" in env
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in env
    assert "ECS_LOGFILE=/log/ecs-agent.log" in env
    assert "ECS_LOGFILE=/somewhere-else.log" not in env
    # dockerd made the missing bind sources, as `docker run -v` does
    assert (tmp_path / "var/log/ecs").is_dir()
    assert (tmp_path / "var/lib/ecs/data").is_dir()


@pytest.mark.docker
async def test_second_start_reuses_the_running_container(
    real_client: DockerClient,
    agent_name: str,
    tmp_path: Path,
    ecs_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = _starter(real_client, agent_name, tmp_path, ecs_config, SLEEP)
    with trio.fail_after(20):
        first = await start()
        started_at = (await real_client.inspect_container(first))["State"]["StartedAt"]
        with caplog.at_level(logging.WARNING, logger="fractal_hostd.ecs_agent"):
            second = await start(image="fhtest-some-other-image:latest")
        inspect = await real_client.inspect_container(first)
    assert second == first
    assert inspect["State"]["Running"] is True
    assert inspect["State"]["StartedAt"] == started_at  # not restarted
    assert "remove it to switch images" in caplog.text


@pytest.mark.docker
async def test_stopped_container_is_started_again(
    real_client: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    # Exits 0 (which `on-failure` does not restart) until the test drops a file in its
    # data directory; then it stays up.
    command = ["sh", "-c", "[ -e /data/stay-up ] && exec sleep 300; exit 0"]
    start = _starter(real_client, agent_name, tmp_path, ecs_config, command)
    with trio.fail_after(20):
        container_id = await start()
        while (await real_client.inspect_container(container_id))["State"]["Status"] != "exited":
            await trio.sleep(0.05)
        (tmp_path / "var/lib/ecs/data/stay-up").touch()
        assert await start() == container_id
        state = (await real_client.inspect_container(container_id))["State"]
    assert state["Running"] is True


@pytest.mark.docker
async def test_concurrent_starts_make_one_container(
    real_client: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    start = _starter(real_client, agent_name, tmp_path, ecs_config, SLEEP)
    ids: list[str] = []

    async def start_and_record() -> None:
        ids.append(await start())

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_and_record)
            nursery.start_soon(start_and_record)
        listed = await real_client.list_containers(all=True, filters={"name": [agent_name]})
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert [c["Id"] for c in listed] == [ids[0]]


@pytest.mark.docker
async def test_missing_image_is_fatal_and_creates_nothing(
    real_client: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    start = _starter(real_client, agent_name, tmp_path, ecs_config, SLEEP)
    with trio.fail_after(20):
        with pytest.raises(EcsAgentImageMissing) as caught:
            await start(image="fhtest-no-such-image:latest")
        with pytest.raises(DockerNotFound):
            await real_client.inspect_container(agent_name)
    assert str(caught.value) == (
        "ECS agent image fhtest-no-such-image:latest is not present on this host; "
        "pull it or set FRACTAL_ECS_AGENT_IMAGE"
    )


@pytest.mark.docker
async def test_run_fails_before_started_when_the_image_is_missing(
    real_client: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    with trio.fail_after(20), pytest.RaisesGroup(EcsAgentImageMissing, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_ecs_agent(
                    real_client,
                    events=EventFanout(),
                    image="fhtest-no-such-image:latest",
                    ecs_config_path=ecs_config,
                    container_name=agent_name,
                    host_root=tmp_path,
                    task_status=task_status,
                )
            )


# The agent stand-in dies with exit code 3 once /data/die1 exists, is restarted by Docker's
# on-failure policy, dies with 4 once /data/die2 exists, then stays up.
DYING_TWICE = [
    "sh",
    "-c",
    "[ -e /data/died2 ] && exec sleep 300;"
    "if [ -e /data/died1 ]; then"
    "  while [ ! -e /data/die2 ]; do sleep 0.05; done; touch /data/died2; exit 4;"
    "fi;"
    "while [ ! -e /data/die1 ]; do sleep 0.05; done; touch /data/died1; exit 3",
]


@pytest.mark.docker
async def test_run_reports_deaths_including_those_while_the_stream_was_down(
    real_client: DockerClient,
    agent_name: str,
    tmp_path: Path,
    ecs_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "var/lib/ecs/data"
    status = DockerStatus()
    caplog.set_level(logging.INFO)
    # Not tmp_path: a unix socket path must stay under ~108 bytes.
    with (
        trio.fail_after(30),
        tempfile.TemporaryDirectory(prefix="fhtest-ecs-", dir="/tmp") as socket_dir,
    ):
        proxy_path = Path(socket_dir) / "docker.sock"
        async with (
            running_unix_proxy(proxy_path, real_client.socket_path) as proxy,
            DockerClient(str(proxy_path)) as via_proxy,
            watching(
                via_proxy,
                status,
                image=TEST_IMAGE,
                ecs_config_path=ecs_config,
                container_name=agent_name,
                host_root=tmp_path,
                command=DYING_TWICE,
            ) as container_id,
        ):
            assert (await real_client.inspect_container(agent_name))["Id"] == container_id

            # Docker "goes away"; the agent dies meanwhile; the death is replayed afterwards.
            await proxy.stop_listening()
            (data / "die1").touch()
            await _wait_until(lambda: (data / "died1").exists())
            await proxy.start_listening()
            await _wait_until(lambda: _reported_exit_codes(caplog) == [3])

            # A second drop: the replay (since the last event) repeats that death, which must
            # not be reported twice; a new death after the re-subscription is reported.
            reconnects = status.reconnects
            proxy.cut()
            await _wait_until(lambda: status.reconnects > reconnects)
            (data / "die2").touch()
            await _wait_until(lambda: len(_reported_exit_codes(caplog)) >= 2)
    assert _reported_exit_codes(caplog) == [3, 4]
    assert status.reconnects >= 2


async def test_the_watcher_opens_no_event_stream_of_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # dockerd answers everything and the agent runs; the deaths come from the fan-out only.
    requests: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request.url.path)
        running = {"Id": "agent-id", "State": {"Status": "running"}, "Config": {"Image": "x"}}
        return httpx.Response(200, json=running)

    fanout = EventFanout()
    caplog.set_level(logging.INFO)
    with trio.fail_after(10):
        async with (
            DockerClient("/unused", transport=httpx.MockTransport(handler)) as client,
            trio.open_nursery() as nursery,
        ):
            assert (
                await nursery.start(
                    functools.partial(run_ecs_agent, client, events=fanout, image="x")
                )
                == "agent-id"
            )
            assert fanout.subscribers == 1
            fanout.publish(
                _die_event("1", time_nano=1)
                | {"Actor": {"ID": "other", "Attributes": {"name": "other"}}}
            )
            fanout.publish(_die_event("2", time_nano=2))
            await _wait_until(lambda: _reported_exit_codes(caplog) == [2])
            nursery.cancel_scope.cancel()
    assert not [path for path in requests if path.endswith("/events")]
    assert fanout.subscribers == 0


async def test_docker_unreachable_before_the_start_is_a_fatal_agent_error(tmp_path: Path) -> None:
    async with DockerClient(str(tmp_path / "no-docker.sock")) as client:
        with trio.fail_after(10), pytest.raises(EcsAgentError, match="could not start the ECS"):
            await run_ecs_agent(
                client, events=EventFanout(), image="amazon/amazon-ecs-agent:latest"
            )


async def test_the_service_with_the_ecs_agent_has_one_event_subscription(tmp_path: Path) -> None:
    # The whole service (a subprocess) against the fakes, the ECS agent on: one `/events`
    # subscription at the engine, and the agent's death still reported (log and Sentry).
    async with running_peers(tmp_path) as peers:
        env = service_env(tmp_path, peers, FRACTAL_START_ECS_AGENT="1")
        async with running_service(tmp_path, env) as service:
            with trio.fail_after(60):
                await peers.webserver.wait_for_heartbeats(1)  # started: the agent runs
                [agent] = [c.id for c in peers.docker.containers.values() if c.name == "ecs-agent"]
                assert peers.docker.containers[agent].running
                assert peers.docker.subscribers == 1
                peers.docker.kill(agent)
                events = await peers.sentry.wait_for_events(1)
                assert peers.docker.subscribers == 1
                service.send_signal()
                assert await service.wait() == 0
        logs = service.logs()
    assert "ECS agent container ecs-agent died with exit code 137" in logs
    assert "ECS agent container ecs-agent died with exit code 137" in json.dumps(events)
