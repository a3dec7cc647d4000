"""The root of the service: start-up order, the supervised child tasks, and the way out.

Shape (see docs/architecture.md):

    run()                                   signal receiver open for the whole life
    └── outer nursery                       holds only the HTTPS API (hypercorn)
        └── inner nursery                   signal watcher, Docker events, heartbeats,
                                            spot poller, systemd watchdog
    then: API drain → local cleanup → ShutdownReport (Sentry, dying heartbeat, flush)

Why two nurseries: hypercorn in the same nursery as tasks that can crash would have its
in-flight requests cut. With the API one floor up, a crash or a signal cancels only the inner
nursery; then the API's shutdown trigger fires and hypercorn drains (graceful timeout) before
the outer nursery closes. Start-up runs inside the inner nursery's body, step by step through
`nursery.start`, so a signal during start-up cancels it like any other child.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from fractal_hostd import __version__
from fractal_hostd.api.bootstrap import ApiUnavailable, api_private_entries, start_api
from fractal_hostd.cloud_storage.mounts import CloudStorage
from fractal_hostd.cloud_storage.rclone_cache import default_cache_root
from fractal_hostd.config import EXIT_CONFIG_ERROR, Config
from fractal_hostd.containers.lifecycle import ContainerLifecycle, MappingsUnwritable
from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry
from fractal_hostd.docker.client import DockerClient
from fractal_hostd.docker.events import DockerUnreachableFatal, run_event_stream
from fractal_hostd.docker.fanout import EventFanout
from fractal_hostd.ecs_agent import EcsAgentError, run_ecs_agent
from fractal_hostd.hoststate import DrainNotice, HostState, InstanceMetadata
from fractal_hostd.metadata.imds import (
    LOCAL_METADATA,
    ImdsClient,
    MetadataUnavailable,
    fetch_metadata,
)
from fractal_hostd.metadata.spot import DrainHook, run_spot_poller
from fractal_hostd.metrics import Metrics
from fractal_hostd.process import early_signals, private_dir, sdnotify, telemetry
from fractal_hostd.process.logs import register_secret, setup_logging
from fractal_hostd.process.signal_watch import SignalWatcher
from fractal_hostd.shutdown import ShutdownCause, ShutdownReport
from fractal_hostd.webserver.client import HandshakeFailed, WebserverClient
from fractal_hostd.webserver.heartbeat import Heartbeats

logger = logging.getLogger(__name__)


# Conditions that end the service on purpose; anything else escaping a child is a crash.
FATAL_ERRORS: tuple[type[BaseException], ...] = (
    MetadataUnavailable,
    HandshakeFailed,
    DockerUnreachableFatal,
    EcsAgentError,
    ApiUnavailable,
    MappingsUnwritable,
)
# Local cleanup (unmounts, private dir) comes before the report and has its own bound.
UNMOUNT_ALL_TIMEOUT = 4.0
PRIVATE_DIR_REMOVAL_TIMEOUT = 1.0
LOCAL_CLEANUP_TIMEOUT = UNMOUNT_ALL_TIMEOUT + PRIVATE_DIR_REMOVAL_TIMEOUT

# The rest of the stop path, each step with a real bound (docs/architecture.md derives the
# unit's TimeoutStopSec from them). Children cancelled: a mount failing at that moment still
# cleans up, shielded, for at most one unmount tool's timeout.
UNMOUNT_TOOL_TIMEOUT = 1.5
CHILDREN_EXIT_BOUND = UNMOUNT_TOOL_TIMEOUT
# In-flight API requests get hypercorn's graceful timeout; the margin bounds hypercorn itself
# (its own shutdown after the drain): past it the API is cancelled outright.
API_GRACEFUL_TIMEOUT = 3.0
API_DRAIN_MARGIN = 0.5
# After the report (FRACTAL_SHUTDOWN_REPORT_TIMEOUT): closing the clients of the outside world
# (an HTTPS client's close may try to say goodbye to a blackholed peer).
CLIENTS_CLOSE_TIMEOUT = 0.5
# Interpreter teardown: worker threads are daemons, Sentry's client is already closed.
PROCESS_EXIT_MARGIN = 0.5


def stop_path_bound(config: Config) -> float:
    """Worst case, in seconds, from a stop signal to the process's exit, every peer stuck."""
    return (
        CHILDREN_EXIT_BOUND
        + API_GRACEFUL_TIMEOUT
        + API_DRAIN_MARGIN
        + LOCAL_CLEANUP_TIMEOUT
        + config.shutdown_report_timeout
        + CLIENTS_CLOSE_TIMEOUT
        + PROCESS_EXIT_MARGIN
    )


def run_service(config: Config) -> int:
    """Run until a signal, a crash or a fatal condition; return the exit code (contract §7)."""
    # A watchdog kill (SIGABRT) or a hard fault then leaves every thread's stack in the journal.
    faulthandler.enable()
    setup_logging(fmt="json" if config.log_format == "json" else "console", level=config.log_level)
    return trio.run(Service(config).run)


def _in_task_scope(
    name: str, task: Callable[..., Awaitable[object]], *args: Any, **kwargs: Any
) -> Callable[..., Awaitable[None]]:
    """`task(*args, **kwargs)` as a child with its own Sentry isolation scope.

    sentry-sdk has no trio integration: without this, tags and breadcrumbs of one task would
    land on the scope all tasks share.
    """

    async def scoped(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        with telemetry.task_scope(name):
            await task(*args, **kwargs, task_status=task_status)

    scoped.__qualname__ = f"task:{name}"  # trio names the task after it (SIGUSR1's tree)
    return scoped


def _seconds_since_exec() -> float | None:
    """This process's age (interpreter start and imports included), from /proc; None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, since boot
    return round(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 2)


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = HostState(version=__version__, environment=config.app_env.value)
        self.metrics = Metrics()
        self.registry = ContainerRegistry()
        self.state.count_pending_file_writes = self.registry.pending_file_writes
        self.cloud_storage = CloudStorage(
            root=config.root,
            config_dir=config.private_dir / "rclone",
            cache_dir=default_cache_root(config.private_dir),
            # Small enough that all fallback unmount tools fit in the local-cleanup budget.
            unmount_timeout=UNMOUNT_TOOL_TIMEOUT,
        )
        self.lifecycle = ContainerLifecycle(
            mappings_dir=config.mappings_dir, registry=self.registry, on_gone=self._on_gone
        )
        self.report = ShutdownReport(
            timeout=config.shutdown_report_timeout,
            capture_error=telemetry.capture_crash,
            flush=telemetry.flush_and_close,
        )
        self._api_stop = trio.Event()
        self._signal_cause: ShutdownCause | None = None
        self._children: trio.Nursery | None = None
        self._children_scope = trio.CancelScope()
        self._stopping = False  # the children are gone: the shutdown path runs

    async def run(self) -> int:
        # One signal handling for the whole life, shutdown path included (signal_watch): the
        # receiver opens before the first side effect and closes after the last.
        with trio.open_signal_receiver(*early_signals.HANDLED) as signals:
            async with trio.open_nursery() as process:
                process.start_soon(SignalWatcher(on_stop=self._stop_on_signal).run, signals)
                try:
                    return await self._run()
                finally:
                    process.cancel_scope.cancel()

    async def _run(self) -> int:
        telemetry.init_sentry(
            dsn=self.config.sentry_dsn.reveal() if self.config.sentry_dsn else None,
            enabled=self.config.sentry_enabled,
            environment=self.config.app_env.value,
            release=telemetry.release_name(__version__, telemetry.git_commit()),
        )
        if not self.config.is_localdev and os.geteuid() != 0:
            logger.error(
                "APP_ENV=%s requires root (running as uid %d); refusing to start",
                self.config.app_env.value,
                os.geteuid(),
            )
            return EXIT_CONFIG_ERROR
        with trio.CancelScope() as closing:
            async with self._clients() as (docker, imds, webserver):
                cause = await self._supervise(docker, imds, webserver)
                sdnotify.stopping()
                await self._clean_up_locally()
                await self.report.run(cause)
                # Bounds only the clients' close, which follows.
                closing.deadline = trio.current_time() + CLIENTS_CLOSE_TIMEOUT
        if closing.cancelled_caught:
            logger.warning("closing the clients cut short after %.1f s", CLIENTS_CLOSE_TIMEOUT)
        return cause.exit_code

    def _stop_on_signal(self, signum: int) -> bool:
        """The first stop signal cancels the children; False once the shutdown path runs."""
        if self._stopping or self._signal_cause is not None:
            return False
        self._signal_cause = ShutdownCause.from_signal(signum)
        # Cancelled before it is entered, the scope cancels start-up at its first checkpoint.
        self._children_scope.cancel()
        return True

    @contextlib.asynccontextmanager
    async def _clients(
        self,
    ) -> AsyncIterator[tuple[DockerClient, ImdsClient | None, WebserverClient | None]]:
        """Clients of the outside world; they outlive the children for the dying heartbeat."""
        config = self.config
        async with contextlib.AsyncExitStack() as stack:
            docker = await stack.enter_async_context(DockerClient(str(config.docker_socket)))
            imds = webserver = None
            if config.imds_url:
                imds = await stack.enter_async_context(ImdsClient(config.imds_url))
            if config.webserver_url:
                webserver = await stack.enter_async_context(WebserverClient(config.webserver_url))
            yield docker, imds, webserver

    async def _supervise(
        self,
        docker: DockerClient,
        imds: ImdsClient | None,
        webserver: WebserverClient | None,
    ) -> ShutdownCause:
        errors: list[BaseException] = []
        try:
            async with trio.open_nursery() as outer:
                try:
                    with self._children_scope:
                        async with trio.open_nursery() as inner:
                            self._children = inner
                            await self._start_up(outer, inner, docker, imds, webserver)
                except BaseException as exc:
                    # Held, not raised: an exception leaving this body would make the outer
                    # nursery cancel hypercorn at once and cut the in-flight requests.
                    errors.append(exc)
                self._stopping = True
                # The children are gone: let hypercorn finish in-flight requests, then stop.
                self._api_stop.set()
                outer.cancel_scope.deadline = (
                    trio.current_time() + API_GRACEFUL_TIMEOUT + API_DRAIN_MARGIN
                )
            if outer.cancel_scope.cancelled_caught:
                logger.warning(
                    "the API did not stop within %.1f s: cancelled",
                    API_GRACEFUL_TIMEOUT + API_DRAIN_MARGIN,
                )
        except BaseException as exc:  # the API server itself failed
            errors.append(exc)
        for error in reversed(errors):  # the API's failure explains the children's cancellation
            cause = ShutdownCause.from_exception(error, FATAL_ERRORS)
            if cause is not None:
                return cause
        if self._signal_cause is None:
            # The children only end by a signal, a crash or a fatal error; anything else is a bug.
            return ShutdownCause("crash", "crash: supervisor children ended unexpectedly")
        return self._signal_cause

    async def _start_up(
        self,
        outer: trio.Nursery,
        inner: trio.Nursery,
        docker: DockerClient,
        imds: ImdsClient | None,
        webserver: WebserverClient | None,
    ) -> None:
        """Contract §6, each step complete before the next; READY=1 only at the end."""
        config = self.config
        sdnotify.status("reading instance metadata")
        if imds is None:
            metadata = LOCAL_METADATA
        else:
            metadata = await fetch_metadata(imds)
        self.state.metadata = metadata
        telemetry.set_instance_tags(metadata)
        logger.info("instance metadata read", extra={"instance_id": metadata.instance_id})

        heartbeats: Heartbeats | None = None
        if webserver is not None:
            sdnotify.status("handshake with the webserver")
            token = await webserver.handshake(metadata, deadline_s=config.handshake_timeout)
            register_secret(token)
            heartbeats = Heartbeats(
                webserver,
                auth_token=token,
                metadata=metadata,
                state=self.state,
                num_containers=lambda: len(self.registry.records()),
                on_result=self._count_heartbeat,
            )
            self.report.arm_dying_heartbeat(heartbeats.send_dying)

        self.state.drain_hook = self._drain_hook(heartbeats)  # POST /drain takes the spot path
        sdnotify.status("starting the HTTPS API")
        await self._serve_api(outer, metadata)
        await self.cloud_storage.remove_leftovers()
        # Probes FRACTAL_ROOT (fatal when unwritable), then retries failed file writes.
        await inner.start(_in_task_scope("file-writer", self.lifecycle.run_file_writer))
        sdnotify.status("reconciling Docker containers")
        docker_events = EventFanout()  # the one /events subscription, shared with the ECS task
        await inner.start(
            _in_task_scope(
                "docker-events",
                run_event_stream,
                docker,
                self.lifecycle,
                unreachable_budget=config.docker_unreachable_budget,
                status=self.state.docker,
                fanout=docker_events,
            )
        )
        if config.start_ecs_agent:
            sdnotify.status("starting the ECS agent")
            await inner.start(
                _in_task_scope(
                    "ecs-agent",
                    run_ecs_agent,
                    docker,
                    events=docker_events,
                    image=config.ecs_agent_image,
                )
            )
        if heartbeats is not None:
            sdnotify.status("sending heartbeat 0")
            await inner.start(
                _in_task_scope(
                    "heartbeats",
                    heartbeats.run,
                    interval=config.heartbeat_interval,
                    jitter=config.heartbeat_jitter,
                )
            )
        if imds is not None:
            # After heartbeat 0, so a drain heartbeat never takes number 0 (and always has
            # a heartbeat stream to report to).
            inner.start_soon(
                _in_task_scope(
                    "spot-poller",
                    run_spot_poller,
                    imds,
                    self.state,
                    interval=config.spot_poll_interval,
                    on_drain=self._drain_hook(heartbeats),
                )
            )
        inner.start_soon(sdnotify.run_watchdog)
        # Everything allocated so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise stall the loop for 12-20 ms (bench/).
        gc.freeze()
        self.state.mark_started()
        sdnotify.ready()
        sdnotify.status("running")
        logger.info(
            "ready",
            extra={"seconds_since_exec": _seconds_since_exec()},
        )

    async def _serve_api(self, outer: trio.Nursery, metadata: InstanceMetadata) -> None:
        await start_api(
            outer,
            self.config,
            metadata,
            state=self.state,
            registry=self.registry,
            lifecycle=self.lifecycle,
            metrics=self.metrics,
            cloud_storage=self.cloud_storage,
            shutdown_trigger=self._api_stop.wait,
            graceful_timeout=API_GRACEFUL_TIMEOUT,
        )

    def _count_heartbeat(self, ok: bool) -> None:
        self.metrics.heartbeat_sent(self.state.last_heartbeat)  # counts, round trip, last ok

    def _drain_hook(self, heartbeats: Heartbeats | None) -> DrainHook:
        async def on_drain(notice: DrainNotice) -> None:
            telemetry.capture_warning(
                "host is draining", kind=notice.kind, action=notice.action, time=notice.time
            )
            # Before heartbeat 0 nothing is sent now: heartbeat 0 then carries IsDraining.
            if heartbeats is not None and heartbeats.next_number > 0:
                await heartbeats.send_now()

        return on_drain

    async def _on_gone(self, record: ContainerRecord) -> None:
        if self._children is None or not self.cloud_storage.has_mounts(record.host_port):
            return
        # Unmounting waits (bounded) for the container's last uploads: never hold the Docker
        # event stream for that. If shutdown cancels it, unmount_all finishes the job.
        self._children.start_soon(
            functools.partial(
                self.cloud_storage.unmount_container, record.host_port, container_id=record.id
            )
        )

    async def _clean_up_locally(self) -> None:
        """Contract §7 step 2: unmount cloud storage, remove the private directory.

        Mapping directories of running containers stay: a restart adopts them.
        """
        # Separate bounds: a hung unmount must not keep the private directory (TLS key, rclone
        # configs with refresh tokens) on disk.
        with trio.move_on_after(UNMOUNT_ALL_TIMEOUT, shield=True) as unmounting:
            await self.cloud_storage.unmount_all()
        if unmounting.cancelled_caught:
            logger.error("unmounting cloud storage cut short after %.0f s", UNMOUNT_ALL_TIMEOUT)
        with trio.move_on_after(PRIVATE_DIR_REMOVAL_TIMEOUT, shield=True) as removing:
            # Abandoned, not awaited, when it overruns: a hung file system cannot hold the exit.
            await trio.to_thread.run_sync(
                private_dir.remove_own,
                self.config.private_dir,
                self._own_private_entries(),
                abandon_on_cancel=True,
            )
        if removing.cancelled_caught:
            logger.error(
                "removing the private directory cut short after %.0f s", PRIVATE_DIR_REMOVAL_TIMEOUT
            )

    def _own_private_entries(self) -> tuple[str, ...]:
        """What the service writes into FRACTAL_PRIVATE_DIR: all it may remove there (§7a)."""
        return (
            *api_private_entries(self.config),
            "rclone",  # CloudStorage's config_dir, above
        )
