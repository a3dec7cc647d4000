"""The endpoints of contract §5. Each handler: authenticate, validate, act, answer JSON.

Order matters for what a stranger can learn: the body is read (size limit: 413) and parsed,
then the credentials are checked (401), and only then is the body validated (400). So an
unauthenticated client learns nothing about the rules; it cannot even tell valid JSON from
invalid. The host port waits of the container endpoints are bounded by `container_wait`
(FRACTAL_CONTAINER_WAIT): the webserver may call before Docker's start event reached us.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request
from quart_trio import QuartTrio

from fractal_hostd.api.auth import Authenticator
from fractal_hostd.api.errors import BadRequest, NotCarriedOut, Unauthorized
from fractal_hostd.api.health import explain, failing_checks, health_checks
from fractal_hostd.api.openapi import openapi_document
from fractal_hostd.api.request_log import note_for_log
from fractal_hostd.api.status import container_summary, drain_summary, status_document
from fractal_hostd.api.validation import (
    InvalidInput,
    StartValues,
    parse_dpi_request,
    parse_drain_request,
    parse_json_object,
    parse_mount_request,
    parse_start_values_request,
)
from fractal_hostd.cloud_storage.mounts import MountFailed, MountRequest
from fractal_hostd.containers.lifecycle import (
    ContainerLifecycle,
    ContainerUnknown,
    ContainerWithoutTty,
)
from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry
from fractal_hostd.history import ContainerHistory, ErrorRing
from fractal_hostd.hoststate import DrainNotice, HostState
from fractal_hostd.metadata.spot import enter_draining
from fractal_hostd.metrics import Metrics

T = TypeVar("T")
logger = logging.getLogger(__name__)

# How long POST /drain may wait for the drain hook (its immediate heartbeat is bounded by
# the webserver client's own 5 s timeout; this is the backstop).
DRAIN_HOOK_TIMEOUT = 10.0


class CloudStorageMounter(Protocol):
    """What the API needs of `fractal_hostd.cloud_storage.mounts.CloudStorage`."""

    async def mount(
        self,
        request: MountRequest,
        *,
        container_id: str,
        is_current: Callable[[], bool] | None = None,
    ) -> Path: ...

    async def unmount_container(
        self, host_port: int, *, container_id: str | None = None
    ) -> None: ...


@dataclass(frozen=True)
class ApiContext:
    state: HostState
    registry: ContainerRegistry
    lifecycle: ContainerLifecycle
    metrics: Metrics
    authenticator: Authenticator
    cloud_storage: CloudStorageMounter | None
    container_wait: float
    history: ContainerHistory
    errors: ErrorRing


def register_routes(app: QuartTrio, ctx: ApiContext) -> None:
    @app.route("/health", methods=["GET"])
    async def health() -> dict[str, Any]:
        # Liveness: 200 whatever the checks say (see api/health.py).
        return {"status": "ok", "checks": health_checks(ctx.state, trio.current_time())}

    @app.route("/ready", methods=["GET"])
    async def ready() -> tuple[dict[str, Any], int]:
        now = trio.current_time()
        checks = health_checks(ctx.state, now)
        failing = failing_checks(ctx.state, now)
        if failing:
            return {"error": explain(failing), "failing": failing, "checks": checks}, 503
        return {"result": "ready", "checks": checks}, 200

    @app.route("/drain", methods=["POST"])
    async def drain() -> dict[str, Any]:
        body = await _authorized_body(ctx.authenticator, body_required=False)
        reason = _validated(parse_drain_request, body)
        now = dt.datetime.now(dt.UTC)
        notice = DrainNotice(
            kind="operator", action=None, time=now.isoformat(), seen_at=now, reason=reason
        )
        entered = ctx.state.draining is None
        # Shielded and bounded: a client hanging up must not cut the drain heartbeat short,
        # and a webserver that never answers must not hold the request (the drain itself is
        # in force before the hook runs).
        with trio.move_on_after(DRAIN_HOOK_TIMEOUT, shield=True) as hook:
            await enter_draining(ctx.state, notice, ctx.state.drain_hook)
        if hook.cancelled_caught:
            logger.warning("drain hook cut short after %g s", DRAIN_HOOK_TIMEOUT)
        current = ctx.state.draining
        assert current is not None
        if entered:
            logger.warning(
                "operator drain: %s", reason or "no reason given", extra={"drain_reason": reason}
            )
        note_for_log(already_draining=not entered)
        return {"result": {"draining": drain_summary(current), "already_draining": not entered}}

    @app.route("/status", methods=["GET"])
    async def status() -> dict[str, Any]:
        await _authorized_body(ctx.authenticator, body_required=False)
        return status_document(ctx.state, ctx.registry, ctx.history, ctx.errors)

    @app.route("/metrics", methods=["GET"])
    async def metrics() -> Response:
        await _authorized_body(ctx.authenticator, body_required=False)
        return Response(generate_latest(ctx.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.route("/openapi.json", methods=["GET"])
    async def openapi() -> dict[str, Any]:
        await _authorized_body(ctx.authenticator, body_required=False)
        return openapi_document()

    @app.route("/set_container_dpi", methods=["PUT"])
    async def set_container_dpi() -> dict[str, Any]:
        body = await _authorized_body(ctx.authenticator, body_required=True)
        return await _write_start_values(ctx, _validated(parse_dpi_request, body))

    @app.route("/set_container_start_values", methods=["PUT"])
    async def set_container_start_values() -> dict[str, Any]:
        body = await _authorized_body(ctx.authenticator, body_required=True)
        return await _write_start_values(ctx, _validated(parse_start_values_request, body))

    @app.route("/mount_cloud_storage", methods=["POST"])
    async def mount_cloud_storage() -> dict[str, Any]:
        body = await _authorized_body(ctx.authenticator, body_required=True)
        mount = _validated(parse_mount_request, body)
        if ctx.state.draining is not None:
            raise NotCarriedOut("host is draining")
        if ctx.cloud_storage is None:
            raise NotCarriedOut("cloud storage is not supported yet")
        record = await _container_for(ctx, mount.host_port)
        try:
            mount_point = await ctx.cloud_storage.mount(
                mount,
                container_id=record.id,
                # The same run: a missed restart keeps the record but moves its port.
                is_current=lambda: (
                    ctx.registry.get(record.id) is record and record.host_port == mount.host_port
                ),
            )
        except MountFailed as exc:
            raise NotCarriedOut(str(exc)) from exc
        if ctx.registry.get(record.id) is not record or record.host_port != mount.host_port:
            # The container died while rclone was mounting: its unmount hook has already run
            # and found nothing, so this mount would be left behind. Only its own: Docker may
            # already have given the port to a new container, whose mounts must stay.
            await ctx.cloud_storage.unmount_container(mount.host_port, container_id=record.id)
            raise NotCarriedOut(f"no container with host port {mount.host_port}")
        if mount.provider not in record.cloud_storage:
            record.cloud_storage.append(mount.provider)
        note_for_log(container_id=record.id, host_port=mount.host_port, provider=mount.provider)
        return {
            "result": {
                "host_port": mount.host_port,
                "provider": mount.provider,
                "mount_point": str(mount_point),
            }
        }


async def _authorized_body(authenticator: Authenticator, *, body_required: bool) -> dict[str, Any]:
    """The request's JSON object once its credentials are checked (see the module doc)."""
    raw = b""
    # An HTTP/1.1 request has a body only when one of these headers announces it (RFC 9112
    # §6.3; the API speaks nothing else): a GET without them skips the read and its timeout
    # scope (~3 % of a /status request's CPU). Other methods always read.
    headers = request.headers
    if request.method != "GET" or "Content-Length" in headers or "Transfer-Encoding" in headers:
        raw = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    body: dict[str, Any] | None = None
    problem: InvalidInput | None = None
    if raw.strip():
        try:
            body = parse_json_object(raw)
        except InvalidInput as exc:
            problem = exc
    elif body_required:
        problem = InvalidInput("body must be a JSON object")
    if not authenticator.is_authorized(request.headers.getlist("Authorization"), body):
        raise Unauthorized
    if problem is not None:
        raise BadRequest(str(problem))
    return body if body is not None else {}


def _validated(parse: Callable[[dict[str, Any]], T], body: dict[str, Any]) -> T:
    try:
        return parse(body)
    except InvalidInput as exc:
        raise BadRequest(str(exc)) from exc


async def _container_for(ctx: ApiContext, host_port: int) -> ContainerRecord:
    """The live container with this host port, waiting up to `container_wait` for it."""
    record = ctx.registry.by_host_port(host_port)
    if record is None:
        with trio.move_on_after(ctx.container_wait):
            record = await ctx.registry.wait_for_host_port(host_port)
    if record is None:
        raise NotCarriedOut(f"no container with host port {host_port}")
    return record


async def _write_start_values(ctx: ApiContext, values: StartValues) -> dict[str, Any]:
    await _container_for(ctx, values.host_port)
    try:
        record = await ctx.lifecycle.set_start_values(
            values.host_port, dpi=values.dpi, container_arn=values.container_arn
        )
    except ContainerUnknown as exc:
        # It died between the lookup and the write.
        raise NotCarriedOut(f"no container with host port {values.host_port}") from exc
    except ContainerWithoutTty as exc:
        raise NotCarriedOut(str(exc)) from exc
    except ValueError as exc:  # the lifecycle's own checks, should validation ever drift
        raise BadRequest(str(exc)) from exc
    except OSError as exc:
        logger.error("writing start values failed: %s", exc, extra={"host_port": values.host_port})
        raise NotCarriedOut(
            f"could not write the container's files: {exc.strerror or type(exc).__name__} "
            "(retrying in the background)"
        ) from exc
    ctx.history.record(record.id, "dpi set", f"dpi {values.dpi}")
    note_for_log(container_id=record.id, host_port=values.host_port, dpi=values.dpi)
    return {"result": container_summary(record)}
