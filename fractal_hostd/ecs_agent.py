"""The Amazon ECS container agent: start it as a Docker container, report its deaths.

ECS places the app-streaming containers on this host through its agent, so the agent must
start only once the host is ready for them (contract §6: after the API serves and the
Docker state is reconciled, before heartbeat 0). `run_ecs_agent` is the child task:

* It subscribes to the agent container's `die` events first, then starts the agent, then
  reports `started(container_id)`: a death right after the start is still seen.
* Each death is logged at ERROR with the exit code (Sentry's logging integration turns it
  into an event). Docker restarts the agent itself (`on-failure`, at most 10 times, the
  policy Amazon documents); we only report.
* The deaths come from the one `/events` subscription of the service, the Docker event
  stream (docker/events.py), through its fan-out (docker/fanout.py): that stream already
  receives every container's `die`, and owns the resume cursor, the reconnect backoff and
  the unreachable budget. Its `since` replay after a reconnect brings the deaths of the gap,
  each published once. The lifecycle of managed containers ignores the agent (it publishes
  no 32262/tcp); only this task listens for the agent's name.

How the container is made follows Amazon's documented `docker run` for running the agent
as a container (github.com/aws/amazon-ecs-agent README, "On Other Linux AMIs", and the
ecs-init defaults): host network, `/etc/ecs/ecs.config` as the env file, the agent's log,
data, config, `/var/run` and cgroup directories bound in, NET_ADMIN and SYS_ADMIN, an init
process. An existing container of that name is reused (started when stopped), never
replaced: our restart must not restart the agent. See docs/ecs-agent.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import trio

from fractal_hostd.docker.client import DockerClient, DockerError, DockerNotFound, DockerUnreachable
from fractal_hostd.docker.fanout import EventFanout

logger = logging.getLogger(__name__)

DEFAULT_CONTAINER_NAME = "ecs-agent"
DEFAULT_ECS_CONFIG_PATH = Path("/etc/ecs/ecs.config")
RESTART_MAX_RETRIES = 10
_CONFLICT_ATTEMPTS = 100  # x _CONFLICT_RETRY_DELAY: how long another creator may take
_CONFLICT_RETRY_DELAY = 0.05
# Deaths waiting to be logged. The restart policy allows 11 lives; more deaths queued than
# this means the task is stuck, and the fan-out then drops (and logs) the surplus.
DEATHS_BUFFERED = 64

# Host directories (relative to the host root) and where the agent sees them.
AGENT_BINDS: tuple[tuple[str, str], ...] = (
    ("var/run", "/var/run"),  # the Docker socket, and ecs-init's runtime files
    ("var/log/ecs", "/log"),
    ("var/lib/ecs/data", "/data"),
    ("etc/ecs", "/etc/ecs"),
    ("sys/fs/cgroup", "/sys/fs/cgroup"),  # task-level CPU/memory limits
)

# Set after ecs.config, so they win, as `--env` after `--env-file` does in Amazon's command.
# ECS_LOGFILE/ECS_DATADIR must match the binds above; spot draining is what lets ECS move
# tasks off this host when a spot interruption notice arrives.
FIXED_AGENT_ENV: Mapping[str, str] = {
    "ECS_LOGFILE": "/log/ecs-agent.log",
    "ECS_DATADIR": "/data",
    "ECS_ENABLE_TASK_IAM_ROLE": "true",
    "ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST": "true",
    "ECS_ENABLE_SPOT_INSTANCE_DRAINING": "true",
}

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EcsAgentError(Exception):
    """The ECS agent cannot be started: a fatal condition at start-up."""


class EcsAgentImageMissing(EcsAgentError):
    def __init__(self, image: str) -> None:
        super().__init__(
            f"ECS agent image {image} is not present on this host; "
            "pull it or set FRACTAL_ECS_AGENT_IMAGE"
        )
        self.image = image


class EcsConfigError(EcsAgentError):
    """ecs.config is malformed. The message names the line, never the value (it may be a secret)."""


def parse_ecs_config(text: str, *, source: str = "ecs.config") -> dict[str, str]:
    """Parse ecs.config as `docker run --env-file` does, but strictly.

    `KEY=VALUE` lines; blank lines and lines starting with `#` (after leading whitespace) are
    skipped; the value is taken verbatim. Refused (EcsConfigError): a line without `=` (Docker
    would copy that variable from *our* environment), a name that is not an environment
    variable name, a NUL byte, and a value wrapped in quotes (`--env-file` keeps quotes while
    shells and systemd strip them, so the author's intent is ambiguous). A repeated name
    keeps the last value, as Docker does, with a warning.
    """
    config: dict[str, str] = {}
    for number, raw_line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw_line.lstrip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        name, equals, value = line.partition("=")
        if not equals:
            raise EcsConfigError(f"{where}: expected KEY=VALUE")
        if not _ENV_NAME.fullmatch(name):
            raise EcsConfigError(f"{where}: {name!r} is not a valid variable name")
        if "\0" in value:
            raise EcsConfigError(f"{where}: {name} contains a NUL byte")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            raise EcsConfigError(
                f"{where}: {name} is quoted; write the value without quotes "
                "(the agent would receive the quotes)"
            )
        if name in config:
            logger.warning("%s: %s is set again; the last value wins", where, name)
        config[name] = value
    return config


async def read_ecs_config(path: Path) -> dict[str, str]:
    """Read and parse ecs.config; a missing file is an empty configuration."""
    try:
        text = await trio.Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        logger.info("%s does not exist; the ECS agent gets only fractal_hostd's settings", path)
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise EcsConfigError(f"cannot read {path}: {exc}") from exc
    return parse_ecs_config(text, source=str(path))


def agent_environment(config: Mapping[str, str]) -> list[str]:
    """The agent's `Env`: ecs.config, then our fixed settings (which win)."""
    for name, value in FIXED_AGENT_ENV.items():
        if name in config and config[name] != value:
            logger.warning("ecs.config sets %s; fractal_hostd overrides it with %s", name, value)
    merged = {**config, **FIXED_AGENT_ENV}
    return [f"{name}={value}" for name, value in merged.items()]


def agent_container_body(
    *,
    image: str,
    env: Sequence[str],
    host_root: Path = Path("/"),
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The `POST /containers/create` body for the agent (Amazon's documented `docker run`)."""
    body: dict[str, Any] = {
        "Image": image,
        "Env": list(env),
        "HostConfig": {
            "NetworkMode": "host",
            # Binds (not Mounts): dockerd creates a missing source directory, as `docker run
            # -v` does, so /var/log/ecs and /var/lib/ecs/data need no set-up step.
            "Binds": [f"{host_root / source}:{target}" for source, target in AGENT_BINDS],
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": RESTART_MAX_RETRIES},
            "CapAdd": ["NET_ADMIN", "SYS_ADMIN"],
            "Init": True,
        },
    }
    if command is not None:
        body["Cmd"] = list(command)
    return body


async def start_ecs_agent(
    client: DockerClient,
    *,
    image: str,
    ecs_config_path: Path = DEFAULT_ECS_CONFIG_PATH,
    container_name: str = DEFAULT_CONTAINER_NAME,
    host_root: Path = Path("/"),
    command: Sequence[str] | None = None,
) -> str:
    """Make sure the agent container runs; returns its id. Idempotent.

    An existing container named `container_name` is reused: left alone when running (or
    restarting, or paused by an operator), started otherwise. Only when there is none is one
    created, from `image` (EcsAgentImageMissing when the image is not on this host).
    `host_root` prefixes the bind sources and `command` overrides the image's command: both
    exist for tests.
    """
    existing = await _inspect_or_none(client, container_name)
    if existing is None:
        config = await read_ecs_config(ecs_config_path)
        body = agent_container_body(
            image=image, env=agent_environment(config), host_root=host_root, command=command
        )
        existing = await _create(client, container_name, body)
    container_id: str = existing["Id"]
    extra = {"container_id": container_id}
    state = existing.get("State") or {}
    status = state.get("Status")
    configured_image = (existing.get("Config") or {}).get("Image")
    if configured_image != image:
        logger.warning(
            "reusing container %s made from image %s, not %s; remove it to switch images",
            container_name,
            configured_image,
            image,
            extra=extra,
        )
    if status in ("running", "restarting", "paused"):
        logger.info("ECS agent container %s is already %s", container_name, status, extra=extra)
        return container_id
    await client.start_container(container_id)
    logger.info("started ECS agent container %s (was %s)", container_name, status, extra=extra)
    return container_id


async def _inspect_or_none(client: DockerClient, container_name: str) -> dict[str, Any] | None:
    try:
        return await client.inspect_container(container_name)
    except DockerNotFound:
        return None


async def _create(
    client: DockerClient, container_name: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Create the container and return its inspect; reuse one created meanwhile by others."""
    image = body["Image"]
    try:
        await client.inspect_image(image)
    except DockerNotFound:
        raise EcsAgentImageMissing(image) from None
    for _ in range(_CONFLICT_ATTEMPTS):
        try:
            container_id = await client.create_container(container_name, body)
        except DockerNotFound:  # the image went away between the two calls
            raise EcsAgentImageMissing(image) from None
        except DockerError as exc:
            if exc.status != 409:
                raise
        else:
            logger.info(
                "created ECS agent container %s from %s",
                container_name,
                image,
                extra={"container_id": container_id},
            )
            return await client.inspect_container(container_id)
        # Someone else is creating it. dockerd reserves the name before the container can
        # be inspected, so wait a moment for theirs to appear, then reuse it.
        await trio.sleep(_CONFLICT_RETRY_DELAY)
        existing = await _inspect_or_none(client, container_name)
        if existing is not None:
            logger.info("container %s was created meanwhile; reusing it", container_name)
            return existing
    raise EcsAgentError(
        f"container name {container_name} stays taken, but no such container appears"
    )


@dataclass(frozen=True)
class AgentDeath:
    container_id: str
    exit_code: int | None  # None when dockerd did not say


def agent_death(event: Mapping[str, Any]) -> AgentDeath | None:
    """The death described by a container `die` event, or None for any other event."""
    if event.get("Type") != "container" or event.get("Action") != "die":
        return None
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    exit_code = attributes.get("exitCode")
    return AgentDeath(
        container_id=str(actor.get("ID") or event.get("id") or ""),
        exit_code=int(exit_code) if isinstance(exit_code, str) and exit_code.isdigit() else None,
    )


def is_death_of(container_name: str) -> Callable[[Mapping[str, Any]], bool]:
    """A fan-out predicate: `die` events of the container named `container_name` (what the
    `/events` filters `container=<name>&event=die` selected when this task subscribed itself)."""

    def wanted(event: Mapping[str, Any]) -> bool:
        if event.get("Type") != "container" or event.get("Action") != "die":
            return False
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        return bool(attributes.get("name") == container_name)

    return wanted


async def run_ecs_agent(
    client: DockerClient,
    *,
    events: EventFanout,
    image: str,
    ecs_config_path: Path = DEFAULT_ECS_CONFIG_PATH,
    container_name: str = DEFAULT_CONTAINER_NAME,
    host_root: Path = Path("/"),
    command: Sequence[str] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Child task: start the agent (`started(container_id)`), then report each of its deaths.

    `events` is the Docker event stream's fan-out: that stream must run (it publishes what it
    handles). Errors before `started` (image missing, bad ecs.config, Docker errors) are
    EcsAgentError: the supervisor treats them as fatal. Afterwards Docker trouble is the event
    stream's to handle; this task only waits for deaths.
    """
    with events.subscribe(
        "ecs-agent", is_death_of(container_name), buffer=DEATHS_BUFFERED
    ) as deaths:
        try:
            container_id = await start_ecs_agent(
                client,
                image=image,
                ecs_config_path=ecs_config_path,
                container_name=container_name,
                host_root=host_root,
                command=command,
            )
        except (DockerUnreachable, DockerError) as exc:
            # Without the agent no task can land here: a fatal condition, not a crash.
            raise EcsAgentError(f"could not start the ECS agent: {exc}") from exc
        task_status.started(container_id)
        while True:
            death = agent_death(await deaths.receive())
            if death is not None:
                _report(container_name, death)


def _report(container_name: str, death: AgentDeath) -> None:
    logger.error(
        "ECS agent container %s died with exit code %s",
        container_name,
        death.exit_code,
        extra={"container_id": death.container_id, "exit_code": death.exit_code},
    )
