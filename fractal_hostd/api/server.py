"""Serve the API app with hypercorn over TLS, inside the caller's nursery (contract §5, §7).

hypercorn's own SSLContext already refuses anything below TLS 1.2 and disables compression
(RFC 7540 §9.2); tests/test_api_server.py checks that a TLS 1.1 client is refused, so a
change of that default cannot pass unnoticed. Graceful drain is hypercorn's: when
`shutdown_trigger` returns, listeners close at once and in-flight requests get
`graceful_timeout` seconds to finish before they are cancelled.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Event, RawData
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.task_group import TaskGroup as HypercornTaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import (
    AppWrapper,
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    ConnectionState,
    H11SendableEvent,
    LifespanState,
    Scope,
    TaskGroup,
)
from hypercorn.utils import (
    ShutdownError,
    parse_socket_addr,
    raise_shutdown,
    repr_socket_addr,
    wrap_app,
)
from prometheus_client import CollectorRegistry
from quart_trio import QuartTrio

from fractal_hostd.api.connections import (
    DEFAULT_MAX_CONNECTIONS,
    ConnectionGate,
    MemoryTrimmer,
    refuse,
)
from fractal_hostd.api.slots import DEFAULT_REQUEST_SLOTS, RequestSlots, SlottedApp
from fractal_hostd.event_priority import EventPriority

logger = logging.getLogger(__name__)

# A client that has not finished its TLS handshake in this long is not the webserver.
SSL_HANDSHAKE_TIMEOUT = 10.0
# As `trio.serve_listeners`: accept fails for want of descriptors or memory; retry shortly.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class _CoalescedWrites:
    """The connection's writes, with a response's head held back for its body.

    hypercorn writes a response in three parts: the head, the body, and the end of the body
    (nothing at all when the head gave a Content-Length, as every answer of ours does). Each
    write took the connection's send lock and the TLS stream's, encrypted a TLS record and
    made a system call: six of a request's ~25 scheduler steps, and three TCP segments for a
    JSON answer. The head now waits for the next write (the body, or whatever comes first:
    the end, or the connection's close) and leaves with it; an empty write is not made.
    """

    def __init__(self, send: Callable[[Event], Awaitable[None]]) -> None:
        self._send = send
        self._head = b""
        self.holding = False  # set while the protocol writes a response's head

    async def __call__(self, event: Event) -> None:
        if isinstance(event, RawData):
            data = self._head + event.data
            if self.holding:
                self._head = data
                return
            self._head = b""
            if data:
                await self._send(RawData(data=data))
            return
        if self._head:  # the connection closes (or its timer changes) before a body came
            head, self._head = self._head, b""
            await self._send(RawData(data=head))
        await self._send(event)


class _Http11WithoutUpgrade(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, minus its two ways into HTTP/2 over a connection that
    ALPN already settled as HTTP/1.1: an `Upgrade: h2c` request (answered 101, then h2) and
    the h2 preface sent as a request line (`PRI * HTTP/2.0`). An `Upgrade` header is then
    just a header (RFC 9110 §7.8 lets a server ignore it) and `PRI *` an ordinary request,
    answered in HTTP/1.1 like any unknown path. A response's head leaves with its body
    (`_CoalescedWrites`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writes = _CoalescedWrites(self.send)
        self.send = self._writes

    async def _check_protocol(self, event: h11.Request) -> None:
        return None

    async def _send_h11_event(self, event: H11SendableEvent) -> None:
        # A final response's head (1xx heads are InformationalResponse) waits for its body.
        self._writes.holding = isinstance(event, h11.Response)
        try:
            await super()._send_h11_event(event)
        finally:
            self._writes.holding = False


class _Http11Only(ProtocolWrapper):
    """A connection that speaks HTTP/1.1 only (see `hypercorn_config`)."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        task_group: TaskGroup,
        state: ConnectionState,
        ssl: bool,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        send: Callable[[Event], Awaitable[None]],
    ) -> None:
        super().__init__(
            app, config, context, task_group, state, ssl, client, server, send, "http/1.1"
        )
        self.protocol = _Http11WithoutUpgrade(
            app, config, context, task_group, state, ssl, client, server, send
        )


class _Http11TCPServer(TCPServer):
    """hypercorn's per-connection handler, with two changes for the API: HTTP/1.1 only, and a
    connection the client closed frees its place at once."""

    async def run(self) -> None:
        # hypercorn 0.18's TCPServer.run with _Http11Only in place of its ProtocolWrapper,
        # which would switch to HTTP/2 on ALPN "h2", an h2c upgrade or the h2 preface. Why
        # HTTP/1.1 only: the webserver needs nothing else, and hypercorn's HTTP/2 code let a
        # client end the whole server (pgjones/hypercorn#334: KeyError for DATA on a stream
        # already answered, which escaped the connection's task into the server's nursery).
        try:
            with trio.fail_after(self.config.ssl_handshake_timeout):
                await self.stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError):
            return  # handshake failed
        socket = self.stream.transport_stream.socket
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with HypercornTaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _Http11Only(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    True,
                    client,
                    server,
                    self.protocol_send,
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            await self._close()

    async def _read_data(self) -> None:
        await super()._read_data()
        # The client has closed. With no request in flight, hypercorn's HTTP/1.1 protocol
        # ignores that and its keep-alive timer alone ends the connection, 5 s later: a slot
        # of FRACTAL_API_MAX_CONNECTIONS, a TLS object and a task held for nothing (a flood
        # of connect-and-close then filled the cap). A request in flight still finishes.
        await self.idle_task.stop()


class _ShieldedSend:
    """ASGI middleware: the app's `send` calls complete even if the app cancels itself.

    quart-trio cancels its per-request nursery as soon as hypercorn reports the client
    "disconnected" — which hypercorn does from inside the final `send`, just before it
    restarts the connection's keep-alive idle timer. The cancel lands in that restart, so an
    idle keep-alive connection then never times out and, on shutdown, is not closed: the
    drain waited the whole graceful timeout for it (measured: 3.0 s instead of 0). Shielding
    `send` lets hypercorn finish its bookkeeping.

    The shield is bounded by `limit` seconds: the send waits for the client to read (TCP's
    window; HTTP/2's flow-control window when hypercorn still spoke it), and a client that
    stops reading would otherwise hold it forever, out of reach of the graceful timeout's
    cancel, so a SIGTERM never ended the service. A legitimate client takes our small
    answers at once.
    """

    def __init__(self, app: ASGIFramework, *, limit: float) -> None:
        self._app = app
        self._limit = limit
        # Set when the drain starts: a send begun late in the drain gets only what is left of
        # it, so the stop path's bound (docs/architecture.md) holds.
        self.drain_deadline = math.inf

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        async def shielded_send(message: ASGISendEvent) -> None:
            # Only the response's last send reaches the timer restart. Shielding every send
            # cost a quarter of the API's throughput (bench/bench_api.py: 1,550 -> 1,200 req/s).
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                deadline = min(trio.current_time() + self._limit, self.drain_deadline)
                with trio.CancelScope(deadline=deadline, shield=True):
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
    # HTTP/1.1 only, offered as the one ALPN protocol (see _Http11TCPServer).
    config.alpn_protocols = ["http/1.1"]
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
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    metrics_registry: CollectorRegistry | None = None,
    request_slots: int = DEFAULT_REQUEST_SLOTS,
    priority: EventPriority | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown_trigger` returns and in-flight requests are drained.

    `task_status.started()` reports the bound URL (``https://HOST:PORT``, the real port when
    `bind` asked for port 0) once the socket listens. At most `max_connections` are open at
    once; the refused ones are counted in `metrics_registry` (see `connections`). At most
    `request_slots` requests run their handler at once (see `slots`), none while `priority`
    holds the API (the lifecycle's, while a container starts).

    This is `hypercorn.trio.serve` (hypercorn/trio/run.py: lifespan, drain, graceful timeout)
    with our own accept loop in place of `trio.serve_listeners` + `trio.SSLListener`: those
    wrap every accepted socket in TLS before a handler could refuse it.
    """
    config = hypercorn_config(
        bind=bind, certfile=certfile, keyfile=keyfile, graceful_timeout=graceful_timeout
    )
    gate = ConnectionGate(max_connections, metrics_registry)
    slots = RequestSlots(request_slots)
    shielded = _ShieldedSend(app, limit=graceful_timeout)
    asgi = wrap_app(
        SlottedApp(shielded, slots, priority),
        config.wsgi_max_body_size,
        "asgi",
    )
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    ssl_context = config.create_ssl_context()
    assert ssl_context is not None  # certfile and keyfile are always set

    async def handle(raw: trio.SocketStream) -> None:
        try:
            stream = trio.SSLStream(raw, ssl_context, server_side=True, https_compatible=True)
            state = ConnectionState(lifespan_state.copy())
            await _Http11TCPServer(asgi, config, context, state, stream).run()
        finally:
            gate.release()
            await trio.aclose_forcefully(raw)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = config.create_sockets()
            listeners = []
            for sock in sockets.secure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            urls = [
                f"https://{repr_socket_addr(sock.family, sock.getsockname())}"
                for sock in sockets.secure_sockets
            ]
            task_status.started(urls[0])
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    nursery.start_soon(MemoryTrimmer(gate).run)
                    nursery.start_soon(slots.run)
                    for listener in listeners:
                        nursery.start_soon(_accept, listener, gate, server_nursery, handle)
            except BaseExceptionGroup as error:
                _, other_errors = error.split(ShutdownError)
                if other_errors is not None:
                    raise other_errors from None
            finally:
                slots.open_all()  # the reaper has stopped: no request may wait for a slot now
                await context.terminated.set()
                # In-flight requests get the graceful timeout, then are cancelled.
                server_nursery.cancel_scope.deadline = trio.current_time() + graceful_timeout
                shielded.drain_deadline = server_nursery.cancel_scope.deadline
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def _accept(
    listener: trio.SocketListener,
    gate: ConnectionGate,
    handlers: trio.Nursery,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    """Accept connections into `handlers` while the gate admits them; refuse the rest."""
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                # Out of file descriptors or memory: the connections we have must end first.
                # A warning (a Sentry breadcrumb): at error, one event every 0.1 s.
                logger.warning("API cannot accept connections: %s", exc.strerror)
                await trio.sleep(0.1)
                continue
            if gate.admit():
                handlers.start_soon(handle, stream)
            else:
                refuse(stream)
