"""Serve the API app with hypercorn over TLS, inside the caller's nursery (contract §5, §7).

hypercorn's own SSLContext already refuses anything below TLS 1.2 and disables compression
(RFC 7540 §9.2); tests/test_api_server.py checks that a TLS 1.1 client is refused, so a
change of that default cannot pass unnoticed. Graceful drain is hypercorn's: when
`shutdown_trigger` returns, listeners close at once and in-flight requests get
`graceful_timeout` seconds to finish before they are cancelled.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import hypercorn.trio
import trio
from hypercorn.config import Config
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart_trio import QuartTrio

# A client that has not finished its TLS handshake in this long is not the webserver.
SSL_HANDSHAKE_TIMEOUT = 10.0


class _ShieldedSend:
    """ASGI middleware: the app's `send` calls complete even if the app cancels itself.

    quart-trio cancels its per-request nursery as soon as hypercorn reports the client
    "disconnected" — which hypercorn does from inside the final `send`, just before it
    restarts the connection's keep-alive idle timer. The cancel lands in that restart, so an
    idle keep-alive connection then never times out and, on shutdown, is not closed: the
    drain waited the whole graceful timeout for it (measured: 3.0 s instead of 0). Shielding
    `send` lets hypercorn finish its bookkeeping; the socket write inside it is already
    shielded by hypercorn itself, so this adds no new way to block.
    """

    def __init__(self, app: ASGIFramework) -> None:
        self._app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        async def shielded_send(message: ASGISendEvent) -> None:
            # Only the response's last send reaches the timer restart. Shielding every send
            # cost a quarter of the API's throughput (bench/bench_api.py: 1,550 -> 1,200 req/s).
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await self._app(scope, receive, shielded_send)


def hypercorn_config(
    *, bind: str, certfile: Path, keyfile: Path, graceful_timeout: float
) -> Config:
    config = Config()
    config.bind = [bind]
    config.certfile = str(certfile)
    config.keyfile = str(keyfile)
    config.graceful_timeout = graceful_timeout
    config.ssl_handshake_timeout = SSL_HANDSHAKE_TIMEOUT
    config.include_server_header = False
    # Our app logs each request itself, without headers; hypercorn's access log would
    # duplicate it. Its error log goes through the service's logging setup.
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve_api(
    app: QuartTrio,
    *,
    bind: str,
    certfile: Path,
    keyfile: Path,
    shutdown_trigger: Callable[[], Awaitable[None]],
    graceful_timeout: float = 3.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger` returns and in-flight requests are drained.

    `task_status.started()` reports the bound URL (``https://HOST:PORT``, the real port when
    `bind` asked for port 0) once the socket listens.
    """
    config = hypercorn_config(
        bind=bind, certfile=certfile, keyfile=keyfile, graceful_timeout=graceful_timeout
    )
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            functools.partial(
                hypercorn.trio.serve,
                _ShieldedSend(app),
                config,
                shutdown_trigger=shutdown_trigger,
                mode="asgi",
            )
        )
        task_status.started(urls[0])
