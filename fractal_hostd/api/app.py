"""The HTTPS API's Quart-Trio application: cross-cutting behaviour around the routes.

Around every request: a Sentry isolation scope (there is no trio integration, so without it
tags would leak between concurrent requests), a scrubber so no request body or credential
reaches a Sentry event, one log line (method, path, status, latency — never bodies or
headers; successful reads at debug), and the request metrics. Every error, including Quart's
own 404/405/413, answers JSON in the shape of contract §5. Routes live in `routes.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sentry_sdk
import trio
from quart import Request, Response, jsonify, request
from quart_trio import QuartTrio
from sentry_sdk.scope import Scope, ScopeType
from sentry_sdk.types import Event, Hint
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from fractal_hostd.api.auth import Authenticator
from fractal_hostd.api.errors import ApiError
from fractal_hostd.api.limits import BODY_TIMEOUT_SECONDS, MAX_BODY_BYTES
from fractal_hostd.api.request_log import RequestLines
from fractal_hostd.api.routes import ApiContext, CloudStorageMounter, register_routes
from fractal_hostd.cloud_storage.mounts import MountRequest
from fractal_hostd.containers.lifecycle import ContainerLifecycle
from fractal_hostd.containers.registry import ContainerRegistry
from fractal_hostd.history import ContainerHistory, service_errors
from fractal_hostd.hoststate import HostState
from fractal_hostd.metrics import Metrics

logger = logging.getLogger(__name__)

_MAX_LOGGED_PATH = 100  # our routes are short; a long path is junk (and costly to redact)
_HTTP_ERRORS = {
    400: "bad request",
    404: "not found",
    405: "method not allowed",
    408: "request timeout",
    413: f"request body over {MAX_BODY_BYTES // 1024} KiB",
}


class HostApi(QuartTrio):
    """The app, with what happens around every request done in one place.

    One override of `handle_request` instead of Quart's before/after-request hooks: the
    hooks cost a `g` and a `request` proxy lookup per use and made `process_response`
    walk the blueprints for them on every request (py-spy: ~3 % of a /status request).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_metrics: Metrics | None = None
        self.request_lines = RequestLines()
        # The metric children of each (route, status), looked up once: `labels()` validates
        # and hashes its arguments under a lock on every call (6 us of a request's ~1 ms).
        self._metric_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        # Each request's Sentry scope is a fork of this one: empty, with the scrubber already
        # on it. Forking the inherited isolation scope instead copied its breadcrumbs (up to
        # 100 from start-up) on every request, and adding the processor took a call more.
        self._request_scope = sentry_sdk.Scope(ty=ScopeType.ISOLATION)
        self._request_scope.add_event_processor(_scrub_event)

    async def handle_request(self, request: Request) -> Response | WerkzeugResponse:
        started = time.perf_counter()
        # Each request gets its own Sentry scope: tags and breadcrumbs set while handling it
        # cannot leak into a concurrent request's events, nor a concurrent one's into it.
        # Set and restored directly: sentry's `use_isolation_scope` also forks the current
        # scope (a deep copy, for spans we never start) behind a generator context manager,
        # 4.4 us against 1.5 us here.
        outer = Scope.get_isolation_scope()
        Scope.set_isolation_scope(self._request_scope.fork())
        try:
            response = await super().handle_request(request)
        finally:
            Scope.set_isolation_scope(outer)
        self._count(request, response.status_code, time.perf_counter() - started)
        return response

    def _count(self, request: Request, status: int, latency: float) -> None:
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "unmatched"
        metric = self._metric_children.get((endpoint, status))
        if metric is None and self.request_metrics is not None:
            metric = self._metric_children[endpoint, status] = (
                self.request_metrics.requests.labels(endpoint=endpoint, status=str(status)),
                self.request_metrics.request_latency.labels(endpoint=endpoint),
            )
        if metric is not None:
            metric[0].inc()
            metric[1].observe(latency)
        # One line per request that changed something or failed. A successful read (probes,
        # scrapes, /status polls) is noise at info and the line costs more than the answer's
        # own work: it logs at debug, and /metrics counts it. /ready is a probe whatever it
        # answers: what made the host unready is logged where it happens.
        quiet = endpoint == "/ready" or (status < 300 and request.method == "GET")
        level = logging.DEBUG if quiet else logging.INFO
        self.request_lines.add(
            level, request.method, request.path[:_MAX_LOGGED_PATH], status, latency
        )


def create_app(
    *,
    state: HostState,
    registry: ContainerRegistry,
    lifecycle: ContainerLifecycle,
    metrics: Metrics,
    auth_secret: str,
    cloud_storage: CloudStorageMounter | None,
    container_wait: float,
) -> HostApi:
    """The API app; raises ValueError for an empty secret (no request could then be allowed)."""
    app = HostApi("fractal_hostd.api", static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        BODY_TIMEOUT=BODY_TIMEOUT_SECONDS,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the documented field order
    metrics.track(state=state, containers=registry, priority=lifecycle.priority)
    history = ContainerHistory(registry.records)
    state.docker.listen(history, replacing=ContainerHistory)
    if cloud_storage is not None:
        cloud_storage = _MeasuredMounts(cloud_storage, metrics, history)
    context = ApiContext(
        state=state,
        registry=registry,
        lifecycle=lifecycle,
        metrics=metrics,
        authenticator=Authenticator(auth_secret),
        cloud_storage=cloud_storage,
        container_wait=container_wait,
        history=history,
        errors=service_errors(),
    )
    register_routes(app, context)
    app.request_metrics = metrics

    @app.before_serving
    async def write_request_lines_in_batches() -> None:
        # Cancelled when serving ends, after the drain (serve_api ends the lifespan's
        # nursery): the lines still waiting are written then.
        app.nursery.start_soon(app.request_lines.run)

    _install_error_handlers(app)
    return app


class _MeasuredMounts:
    """The cloud storage as the routes see it, with every mount's duration or failure
    counted and each mount in the container's history (so the mount route itself stays
    about the request)."""

    def __init__(
        self, inner: CloudStorageMounter, metrics: Metrics, history: ContainerHistory
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._history = history

    async def mount(
        self,
        request: MountRequest,
        *,
        container_id: str,
        is_current: Callable[[], bool] | None = None,
    ) -> Path:
        provider = request.provider
        started = trio.current_time()
        try:
            mount_point = await self._inner.mount(
                request, container_id=container_id, is_current=is_current
            )
        except Exception:  # a cancel (client gone, shutdown) is not the mount's failure
            self._metrics.mount_done(provider, trio.current_time() - started, ok=False)
            self._history.record(container_id, "mount failed", provider)
            raise
        self._metrics.mount_done(provider, trio.current_time() - started, ok=True)
        self._history.record(container_id, "mounted", provider)
        return mount_point

    async def unmount_container(self, host_port: int, *, container_id: str | None = None) -> None:
        await self._inner.unmount_container(host_port, container_id=container_id)


def _install_error_handlers(app: HostApi) -> None:
    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> tuple[Response, int]:
        return jsonify(error.body), error.status

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> tuple[Response, int, dict[str, str]]:
        status = error.code or 500
        message = _HTTP_ERRORS.get(status, (error.name or "error").lower())
        # Keep headers that matter to the client (Allow on a 405), drop Werkzeug's HTML type.
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        return jsonify({"error": message}), status, headers

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> tuple[Response, int]:
        # A bug, not bad input (validation turns all of that into 4xx): log it with its
        # traceback; at error level the logging integration reports it to Sentry.
        logger.error(
            "unhandled error in %s %s",
            request.method,
            request.path[:_MAX_LOGGED_PATH],
            exc_info=error,
        )
        return jsonify({"error": "internal error"}), 500


def _scrub_event(event: Event, hint: Hint) -> Event:
    """Drop what a request could carry of secrets: body, cookies, query, credentials."""
    request_info = event.get("request")
    if isinstance(request_info, dict):
        for key in ("data", "cookies", "query_string"):
            request_info.pop(key, None)
        headers = request_info.get("headers")
        if isinstance(headers, dict):
            request_info["headers"] = {
                name: value
                for name, value in headers.items()
                if name.lower() not in ("authorization", "cookie", "proxy-authorization")
            }
    return event
