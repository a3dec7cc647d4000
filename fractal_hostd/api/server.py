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
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import hypercorn.trio
import hypercorn.trio.run
import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart_trio import QuartTrio

logger = logging.getLogger(__name__)

# A client that has not finished its TLS handshake in this long is not the webserver.
SSL_HANDSHAKE_TIMEOUT = 10.0


class _ContainedTCPServer(TCPServer):
    """hypercorn's per-connection handler, whose errors end that connection only.

    hypercorn runs each connection under `trio.serve_listeners`, whose handler nursery is the
    server's own: an exception escaping one connection's protocol code cancels the whole
    server, and with it the service (contract §5: bad input must never disturb it). That is
    not theoretical: hypercorn 0.18's HTTP/2 code raises KeyError for DATA that arrives on a
    stream it has already answered (pgjones/hypercorn#334, unfixed), which any client gets by
    sending a body over 64 KiB (413) or a large body to an unknown path (404). Under asyncio
    hypercorn loses just the connection; this gives trio the same behaviour.
    """

    async def run(self) -> None:
        try:
            await super().run()
        except* Exception as errors:  # cancellations pass through untouched
            # Warning, not error: a client can provoke this at will, so it must not flood
            # Sentry, nor the journal with tracebacks (those only at debug level).
            logger.warning(
                "API connection dropped after an error in hypercorn: %s",
                "; ".join(f"{type(exc).__name__}: {exc}" for exc in _leaves(errors)),
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


# `hypercorn.trio.serve` builds each connection's handler from this module attribute.
hypercorn.trio.run.TCPServer = _ContainedTCPServer  # type: ignore[attr-defined]


class _ShieldedSend:
    """ASGI middleware: the app's `send` calls complete even if the app cancels itself.

    quart-trio cancels its per-request nursery as soon as hypercorn reports the client
    "disconnected" — which hypercorn does from inside the final `send`, just before it
    restarts the connection's keep-alive idle timer. The cancel lands in that restart, so an
    idle keep-alive connection then never times out and, on shutdown, is not closed: the
    drain waited the whole graceful timeout for it (measured: 3.0 s instead of 0). Shielding
    `send` lets hypercorn finish its bookkeeping.

    The shield is bounded by `limit` seconds: over HTTP/2 the send waits for the client's
    flow-control window, and a client that advertises a window of 0 (or stops reading) would
    otherwise hold it forever, out of reach of the graceful timeout's cancel, so a SIGTERM
    never ended the service. A legitimate client takes our small answers at once.
    """

    def __init__(self, app: ASGIFramework, *, limit: float) -> None:
        self._app = app
        self._limit = limit

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        async def shielded_send(message: ASGISendEvent) -> None:
            # Only the response's last send reaches the timer restart. Shielding every send
            # cost a quarter of the API's throughput (bench/bench_api.py: 1,550 -> 1,200 req/s).
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                with trio.move_on_after(self._limit, shield=True):
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
                _ShieldedSend(app, limit=graceful_timeout),
                config,
                shutdown_trigger=shutdown_trigger,
                mode="asgi",
            )
        )
        task_status.started(urls[0])
