"""The API's start: its secret, a fresh certificate, the app, hypercorn listening, api_url.

The supervisor only says when (contract §6: after the handshake, before the Docker stream)
and hands over what the routes read; everything the API needs to exist is made here.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable

import trio

from fractal_hostd.api.app import create_app
from fractal_hostd.api.routes import CloudStorageMounter
from fractal_hostd.api.secret import load_or_create_auth_secret
from fractal_hostd.api.server import serve_api
from fractal_hostd.api.tls import CERT_FILE_NAME, KEY_FILE_NAME, generate_certificate
from fractal_hostd.config import API_URL_FILE, Config
from fractal_hostd.containers.lifecycle import ContainerLifecycle
from fractal_hostd.containers.registry import ContainerRegistry
from fractal_hostd.exception_groups import leaves
from fractal_hostd.hoststate import HostState, InstanceMetadata
from fractal_hostd.metrics import Metrics
from fractal_hostd.process.logs import register_secret
from fractal_hostd.process.portholder import describe_port_holder
from fractal_hostd.process.private_files import ensure_private_dir, write_private_file

logger = logging.getLogger(__name__)


class ApiUnavailable(Exception):
    """The HTTPS API cannot listen where it is configured to."""

    show_traceback = False  # the operator's to fix; the message says what (shutdown.py)


def api_private_entries(config: Config) -> tuple[str, ...]:
    """What start_api writes into FRACTAL_PRIVATE_DIR, so the service removes it at stop."""
    return (KEY_FILE_NAME, CERT_FILE_NAME, API_URL_FILE, config.auth_secret_file.name)


async def start_api(
    nursery: trio.Nursery,
    config: Config,
    metadata: InstanceMetadata,
    *,
    state: HostState,
    registry: ContainerRegistry,
    lifecycle: ContainerLifecycle,
    metrics: Metrics,
    cloud_storage: CloudStorageMounter | None,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout: float,
) -> str:
    """Serve the API in `nursery` (it drains when `shutdown_trigger` returns); its URL once
    it listens, also written to FRACTAL_PRIVATE_DIR/api_url. Raises ApiUnavailable when it
    cannot listen on FRACTAL_API_BIND."""
    ensure_private_dir(config.private_dir)
    if config.webserver_auth_secret is not None:
        secret = config.webserver_auth_secret.reveal()
    else:
        secret = load_or_create_auth_secret(config.auth_secret_file)
    register_secret(secret)
    cert = generate_certificate(
        config.private_dir,
        extra_names=[ip for ip in (metadata.local_ipv4, metadata.public_ipv4) if ip],
    )
    app = create_app(
        state=state,
        registry=registry,
        lifecycle=lifecycle,
        metrics=metrics,
        auth_secret=secret,
        cloud_storage=cloud_storage,
        container_wait=config.container_wait,
    )
    try:
        url: str = await nursery.start(
            functools.partial(
                serve_api,
                app,
                bind=config.api_bind,
                certfile=cert.certfile,
                keyfile=cert.keyfile,
                shutdown_trigger=shutdown_trigger,
                graceful_timeout=graceful_timeout,
                max_connections=config.api_max_connections,
                metrics_registry=metrics.registry,
                priority=lifecycle.priority,
            )
        )
    except* OSError as errors:
        # Address in use, or not an address of this host: a fatal condition naming the knob.
        error = next(leaves(errors))
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
            holder = describe_port_holder(config.api_port)
            reason = f"{reason}, {holder}; stop it or choose another port"
        raise ApiUnavailable(
            f"cannot serve the API on FRACTAL_API_BIND={config.api_bind}: {reason}"
        ) from error
    state.api_url = url
    write_private_file(config.private_dir / API_URL_FILE, url)
    logger.info("HTTPS API serving", extra={"url": url})
    return url
