"""Tests of fractal_hostd.ecs_agent.

Rules: parsing and body-building are tested as pure functions. The `docker` tests use the
real engine on /var/run/docker.sock (skipped with the reason when it does not answer or the
test image is missing); the busybox test image stands in for the agent image, with a
command instead of the agent; containers are named `fhtest-ecs-agent-<random>` and removed
afterwards; bind sources live under tmp_path; an absolute `trio.fail_after` bounds every I/O
test.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from fractal_hostd.docker.client import DockerClient, DockerNotFound
from fractal_hostd.ecs_agent import (
    FIXED_AGENT_ENV,
    AgentDeath,
    EcsAgentError,
    EcsAgentImageMissing,
    EcsConfigError,
    agent_container_body,
    agent_death,
    agent_environment,
    parse_ecs_config,
    read_ecs_config,
    run_ecs_agent,
    start_ecs_agent,
)
from tests.docker_fixtures import EmptyStream
from tests.fakes.unix_proxy import running_unix_proxy

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


# --- real engine ---------------------------------------------------------------------------


@pytest.fixture
async def docker(docker_socket: Path) -> AsyncIterator[DockerClient]:
    """A client of the real engine (conftest's `docker_socket` skips when none answers)."""
    async with DockerClient(str(docker_socket)) as client:
        with trio.fail_after(10):
            try:
                await client.inspect_image(TEST_IMAGE)
            except DockerNotFound:
                pytest.skip(f"test image {TEST_IMAGE} missing: run scripts/build-test-image.sh")
        yield client


@pytest.fixture
async def agent_name(docker: DockerClient) -> AsyncIterator[str]:
    name = f"fhtest-ecs-agent-{secrets.token_hex(4)}"
    yield name
    with trio.move_on_after(20, shield=True):
        with contextlib.suppress(DockerNotFound):
            await docker.remove_container(name, force=True)


@pytest.fixture
def ecs_config(tmp_path: Path) -> Path:
    path = tmp_path / "ecs.config"
    path.write_text("ECS_CLUSTER=fhtest\nECS_LOGFILE=/somewhere-else.log\n")
    return path


def _starter(
    docker: DockerClient, name: str, tmp_path: Path, ecs_config: Path, command: list[str]
) -> Callable[..., Any]:
    async def start(image: str = TEST_IMAGE) -> str:
        return await start_ecs_agent(
            docker,
            image=image,
            ecs_config_path=ecs_config,
            container_name=name,
            host_root=tmp_path,
            command=command,
        )

    return start


@pytest.mark.docker
async def test_start_creates_and_runs_the_agent_container(
    docker: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    with trio.fail_after(20):
        container_id = await _starter(docker, agent_name, tmp_path, ecs_config, SLEEP)()
        inspect = await docker.inspect_container(agent_name)
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
    docker: DockerClient,
    agent_name: str,
    tmp_path: Path,
    ecs_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = _starter(docker, agent_name, tmp_path, ecs_config, SLEEP)
    with trio.fail_after(20):
        first = await start()
        started_at = (await docker.inspect_container(first))["State"]["StartedAt"]
        with caplog.at_level(logging.WARNING, logger="fractal_hostd.ecs_agent"):
            second = await start(image="fhtest-some-other-image:latest")
        inspect = await docker.inspect_container(first)
    assert second == first
    assert inspect["State"]["Running"] is True
    assert inspect["State"]["StartedAt"] == started_at  # not restarted
    assert "remove it to switch images" in caplog.text


@pytest.mark.docker
async def test_stopped_container_is_started_again(
    docker: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    # Exits 0 (which `on-failure` does not restart) until the test drops a file in its
    # data directory; then it stays up.
    command = ["sh", "-c", "[ -e /data/stay-up ] && exec sleep 300; exit 0"]
    start = _starter(docker, agent_name, tmp_path, ecs_config, command)
    with trio.fail_after(20):
        container_id = await start()
        while (await docker.inspect_container(container_id))["State"]["Status"] != "exited":
            await trio.sleep(0.05)
        (tmp_path / "var/lib/ecs/data/stay-up").touch()
        assert await start() == container_id
        state = (await docker.inspect_container(container_id))["State"]
    assert state["Running"] is True


@pytest.mark.docker
async def test_concurrent_starts_make_one_container(
    docker: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    start = _starter(docker, agent_name, tmp_path, ecs_config, SLEEP)
    ids: list[str] = []

    async def start_and_record() -> None:
        ids.append(await start())

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_and_record)
            nursery.start_soon(start_and_record)
        listed = await docker.list_containers(all=True, filters={"name": [agent_name]})
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert [c["Id"] for c in listed] == [ids[0]]


@pytest.mark.docker
async def test_missing_image_is_fatal_and_creates_nothing(
    docker: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    start = _starter(docker, agent_name, tmp_path, ecs_config, SLEEP)
    with trio.fail_after(20):
        with pytest.raises(EcsAgentImageMissing) as caught:
            await start(image="fhtest-no-such-image:latest")
        with pytest.raises(DockerNotFound):
            await docker.inspect_container(agent_name)
    assert str(caught.value) == (
        "ECS agent image fhtest-no-such-image:latest is not present on this host; "
        "pull it or set FRACTAL_ECS_AGENT_IMAGE"
    )


@pytest.mark.docker
async def test_run_fails_before_started_when_the_image_is_missing(
    docker: DockerClient, agent_name: str, tmp_path: Path, ecs_config: Path
) -> None:
    with trio.fail_after(20), pytest.RaisesGroup(EcsAgentImageMissing, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: run_ecs_agent(
                    docker,
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
    docker: DockerClient,
    agent_name: str,
    tmp_path: Path,
    ecs_config: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "var/lib/ecs/data"

    def records(level: int) -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if r.name == "fractal_hostd.ecs_agent" and r.levelno == level
        ]

    def reported_exit_codes() -> list[int]:
        return [r.exit_code for r in records(logging.ERROR)]  # type: ignore[attr-defined]

    async def wait_until(condition: Callable[[], bool]) -> None:
        while not condition():
            await trio.sleep(0.02)

    caplog.set_level(logging.DEBUG, logger="fractal_hostd.ecs_agent")
    # Not tmp_path: a unix socket path must stay under ~108 bytes.
    with (
        trio.fail_after(30),
        tempfile.TemporaryDirectory(prefix="fhtest-ecs-", dir="/tmp") as socket_dir,
    ):
        proxy_path = Path(socket_dir) / "docker.sock"
        async with (
            running_unix_proxy(proxy_path, docker.socket_path) as proxy,
            DockerClient(str(proxy_path)) as via_proxy,
            trio.open_nursery() as nursery,
        ):
            container_id = await nursery.start(
                lambda task_status: run_ecs_agent(
                    via_proxy,
                    image=TEST_IMAGE,
                    ecs_config_path=ecs_config,
                    container_name=agent_name,
                    host_root=tmp_path,
                    command=DYING_TWICE,
                    task_status=task_status,
                )
            )
            assert (await docker.inspect_container(agent_name))["Id"] == container_id

            # Docker "goes away"; the agent dies meanwhile; the death is replayed afterwards.
            await proxy.stop_listening()
            (data / "die1").touch()
            await wait_until(lambda: (data / "died1").exists())
            await proxy.start_listening()
            await wait_until(lambda: reported_exit_codes() == [3])

            # A second drop: the replay (since the last event) repeats that death, which must
            # not be reported twice; a new death after the re-subscription is reported.
            subscriptions = len(records(logging.DEBUG))
            proxy.cut()
            await wait_until(lambda: len(records(logging.DEBUG)) > subscriptions)
            (data / "die2").touch()
            await wait_until(lambda: len(reported_exit_codes()) >= 2)
            nursery.cancel_scope.cancel()
    assert reported_exit_codes() == [3, 4]
    assert "subscribing again" in caplog.text


async def test_a_stream_that_ends_at_once_is_resubscribed_with_growing_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # dockerd answers everything, the agent runs, but every `/events` response ends at once.
    subscriptions: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            subscriptions.append(trio.current_time())
            return httpx.Response(200, stream=EmptyStream())
        running = {"Id": "agent-id", "State": {"Status": "running"}, "Config": {"Image": "x"}}
        return httpx.Response(200, json=running)

    async with (
        DockerClient("/unused", transport=httpx.MockTransport(handler)) as client,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(functools.partial(run_ecs_agent, client, image="x"))
        await trio.sleep(120)
        nursery.cancel_scope.cancel()
    # Backoff 0.5 s doubling to its 30 s cap: about a dozen subscriptions in two minutes (40
    # would need the jitter ~8 standard deviations low), not one every ~0.25 s (~500) as when
    # every subscription reset the backoff.
    assert 4 <= len(subscriptions) <= 40


async def test_docker_unreachable_before_the_start_is_a_fatal_agent_error(tmp_path: Path) -> None:
    async with DockerClient(str(tmp_path / "no-docker.sock")) as client:
        with trio.fail_after(10), pytest.raises(EcsAgentError, match="could not start the ECS"):
            await run_ecs_agent(client, image="amazon/amazon-ecs-agent:latest")
