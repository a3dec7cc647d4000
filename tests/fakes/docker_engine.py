"""A fake Docker Engine: the API subset fractal_hostd uses, over real HTTP/1.1 on a unix socket.

A tiny trio + h11 server rather than hypercorn: the tests need exact control of the
connection (a chunked `/events` stream cut without its final chunk, a listener that stops
accepting so connects are refused, arbitrary chunk boundaries), which a framework hides.

Use inside a trio test:

    async with running_fake_docker(tmp_path / "docker.sock") as engine:
        cid = engine.run(name="fhtest-a")            # create + start, 32262 published
        engine.kill(cid)                              # emits kill + die
        engine.drop_streams()                         # cut every /events connection abruptly
        await engine.stop_listening(); ...; engine.start_listening()   # connection refused
        engine.silent = True                          # subscribers miss events (still logged)
        engine.hang = True                            # requests are never answered (wedged)
        engine.fail(r"GET /containers/json", 500)     # error answers on chosen paths
        engine.fail_inspect(cid, 500)                 # one container's inspect errs
        engine.cut(r"GET /containers/json", times=1)  # connection closed, no answer
        gate = engine.hold(rf"GET /containers/{cid}/json")   # sent when gate.set()
        engine.pause(cid); engine.unpause(cid)        # State.Paused, pause/unpause events
        await engine.burst(1000)                      # N die events of unknown ids

Served: /_ping, /version, /containers/json, /containers/create, /containers/{id}/json,
/containers/{id}/start, /containers/{id}/kill, /containers/{id}/pause, /containers/{id}/unpause,
DELETE /containers/{id}, /images/{name}/json,
/events (filters type/event/container, since/until replay from a bounded 256-event log like
dockerd's). Paths work with or without the /v1.NN prefix. Like dockerd, a subscriber whose
queue (1024 events) is full loses events (`engine.dropped_events`): dockerd waits 100 ms
before skipping, this fake skips at once, which is stricter.

`python -m tests.fakes.docker_engine SOCKET` serves standalone (for benchmarks in another
process); it then also answers control calls under /fake/ (see `_control`).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
import trio

from tests.fakes.docker_model import (
    BUSYBOX,
    MANAGED_PORT,
    FakeContainer,
    HttpError,
    matches,
    parse_timestamp,
)

_VERSION_PREFIX = re.compile(r"^/v1\.\d+(?=/)")
_SUBSCRIBER_QUEUE = 1024


class _CutConnection(Exception):
    """Raised inside a request's handling to close its connection without an answer."""


@dataclass
class _Subscriber:
    filters: dict[str, list[str]]
    send: trio.MemorySendChannel[dict[str, Any]]
    dropped: int = 0


@dataclass
class _Failure:
    """A fault for requests matching `pattern`: an error answer (`status`), a connection
    closed without an answer (`status` None, `gate` None), or an answer held until `gate`."""

    pattern: re.Pattern[str]
    status: int | None
    message: str
    remaining: int | None
    gate: trio.Event | None = None


class FakeDockerEngine:
    def __init__(self, socket_path: str | Path, *, log_size: int = 256) -> None:
        self.socket_path = str(socket_path)
        self.images: set[str] = {BUSYBOX, "amazon/amazon-ecs-agent:latest"}
        self.containers: dict[str, FakeContainer] = {}
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self.requests: list[str] = []  # "METHOD /path" in arrival order (no version prefix)
        self.silent = False  # True: live subscribers miss events (they stay in the log)
        self.event_chunk_size: int | None = None  # cut each event into chunks of this size
        self.hang = False  # True: requests are read but never answered (a wedged dockerd)
        self.published = 0
        self._subscribers: list[_Subscriber] = []
        self._failures: list[_Failure] = []
        self._last_time_nano = 0
        self._next_host_port = itertools.count(32768)
        self._next_pid = itertools.count(1000)
        self._listener: trio.SocketListener | None = None
        self._listen_scope: trio.CancelScope | None = None
        self._connections: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None
        self._dropped_gone = 0

    # ---- controls ---------------------------------------------------------------------------

    @property
    def dropped_events(self) -> int:
        return self._dropped_gone + sum(s.dropped for s in self._subscribers)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def fail(
        self,
        pattern: str,
        status: int = 500,
        *,
        times: int | None = None,
        message: str = "fake engine failure",
    ) -> None:
        """Answer requests whose "METHOD /path" matches `pattern` with an error."""
        self._failures.append(_Failure(re.compile(pattern), status, message, times))

    def fail_inspect(
        self, container_id: str, status: int = 500, *, times: int | None = None
    ) -> None:
        """Only this container's inspect answers `status`; every other call works."""
        self.fail(rf"^GET /containers/{re.escape(container_id)}/json$", status, times=times)

    def cut(self, pattern: str, *, times: int | None = None) -> None:
        """Close the connection of matching requests without answering (a transport failure)."""
        self._failures.append(_Failure(re.compile(pattern), None, "", times))

    def hold(self, pattern: str, *, times: int | None = 1) -> trio.Event:
        """Answer matching requests as of their arrival, but only once the returned event is
        set (a stale view reaching the client late)."""
        gate = trio.Event()
        self._failures.append(_Failure(re.compile(pattern), None, "", times, gate))
        return gate

    def clear_failures(self) -> None:
        self._failures.clear()

    def create(
        self,
        name: str | None = None,
        *,
        image: str = BUSYBOX,
        publish: bool = True,
        host_port: int | None = None,
        cmd: list[str] | None = None,
    ) -> str:
        body: dict[str, Any] = {"Image": image, "Cmd": cmd or ["sleep", "300"]}
        if publish:
            body["ExposedPorts"] = {MANAGED_PORT: {}}
            body["HostConfig"] = {
                "PortBindings": {
                    MANAGED_PORT: [{"HostIp": "127.0.0.1", "HostPort": str(host_port or "")}]
                }
            }
        return self._create(name or f"fhtest-{secrets.token_hex(4)}", body)

    def start(self, container_id: str) -> None:
        self._start(self._find(container_id))

    def run(self, name: str | None = None, **kwargs: Any) -> str:
        container_id = self.create(name, **kwargs)
        self.start(container_id)
        return container_id

    def kill(self, container_id: str, signal: str = "KILL") -> None:
        container = self._find(container_id)
        if not container.running:
            raise HttpError(409, f"Container {container.id} is not running")
        self._emit("kill", container, {"signal": "9" if signal == "KILL" else signal})
        self._die(container, 137)

    def pause(self, container_id: str) -> None:
        container = self._find(container_id)
        if container.status != "running":
            raise HttpError(409, f"Container {container.id} is not running")
        container.status = "paused"
        self._emit("pause", container)

    def unpause(self, container_id: str) -> None:
        container = self._find(container_id)
        if not container.paused:
            raise HttpError(409, f"Container {container.id} is not paused")
        container.status = "running"
        self._emit("unpause", container)

    def remove(self, container_id: str, *, force: bool = True) -> None:
        container = self._find(container_id)
        if container.running:
            if not force:
                raise HttpError(409, "You cannot remove a running container")
            self._emit("kill", container, {"signal": "9"})
            self._die(container, 137)
        del self.containers[container.id]
        self._emit("destroy", container)

    def emit(
        self,
        action: str,
        container_id: str,
        *,
        name: str = "x",
        attributes: dict[str, str] | None = None,
        time_nano: int | None = None,
    ) -> None:
        """Publish a raw container event (the id need not exist)."""
        fake = FakeContainer(container_id, name, BUSYBOX, [], {}, {})
        self._emit(action, fake, attributes, time_nano=time_nano)

    async def burst(self, count: int, action: str = "die") -> None:
        """`count` events of unknown (random) container ids, as fast as subscribers take
        them: like dockerd, each subscriber gets 100 ms to make room before it loses one."""
        for _ in range(count):
            container = FakeContainer(secrets.token_hex(32), "x", BUSYBOX, [], {}, {})
            event = self._event(action, container, None, None)
            self._record(event)
            for subscriber in list(self._subscribers):
                if self.silent or not matches(subscriber.filters, event):
                    continue
                with trio.move_on_after(0.1) as scope:
                    await subscriber.send.send(event)
                if scope.cancelled_caught:
                    subscriber.dropped += 1

    def drop_streams(self) -> None:
        """Cut every connection abruptly (an /events stream ends without its last chunk)."""
        for scope in list(self._connections):
            scope.cancel()

    async def stop_listening(self) -> None:
        """dockerd gone: close the listener (connects are refused) and every connection."""
        if self._listen_scope is not None:
            self._listen_scope.cancel()
            self._listen_scope = None
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None
        self.drop_streams()
        await trio.lowlevel.checkpoint()

    async def start_listening(self) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._listen)

    # ---- serving ----------------------------------------------------------------------------

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._listen)
            task_status.started()
            await trio.sleep_forever()  # keeps the nursery open while not listening

    async def _listen(
        self,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        Path(self.socket_path).unlink(missing_ok=True)
        # Bound synchronously: trio's async bind gives autojump_clock an idle moment in
        # which virtual time could leap while the socket file is missing.
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.bind(self.socket_path)
        raw.listen(256)
        sock = trio.socket.from_stdlib_socket(raw)
        self._listener = listener = trio.SocketListener(sock)
        with trio.CancelScope() as scope:
            self._listen_scope = scope
            assert self._nursery is not None
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except trio.ClosedResourceError:
                    return  # stop_listening() closed it under us
                self._nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                await self._http(stream, h11.Connection(h11.SERVER))
            except (
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                h11.ProtocolError,
                _CutConnection,
            ):
                pass
            finally:
                self._connections.discard(scope)
        # Abrupt: no final chunk, no graceful shutdown of the HTTP exchange.
        await stream.aclose()

    async def _http(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        while True:
            request: h11.Request | None = None
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data and request is None:
                        return
                elif isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return
            assert request is not None
            await self._answer(stream, conn, request, body)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _answer(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, body: bytes
    ) -> None:
        target = urlsplit(request.target.decode())
        path = _VERSION_PREFIX.sub("", unquote(target.path))
        query = {k: v[-1] for k, v in parse_qs(target.query).items()}
        method = request.method.decode()
        self.requests.append(f"{method} {path}")
        if self.hang:
            await trio.sleep_forever()
        failure = self._matching_failure(f"{method} {path}")
        try:
            if failure is not None and failure.gate is None:
                if failure.status is None:
                    raise _CutConnection
                raise HttpError(failure.status, failure.message)
            if method == "GET" and path == "/events":
                await self._events(stream, conn, query)
                return
            if (method, path) == ("POST", "/fake/burst"):
                await self.burst(int(query.get("count", "1")), query.get("action", "die"))
            status, payload = self._route(method, path, query, body)
        except HttpError as exc:
            status, payload = exc.status, {"message": exc.message}
        if failure is not None and failure.gate is not None:
            # The answer is made now and sent later: what the client gets is a view of the
            # past, as from a dockerd slow to send it (the client's view of it is stale).
            await failure.gate.wait()
        await _send(stream, conn, status, payload)

    def _matching_failure(self, request_line: str) -> _Failure | None:
        for failure in self._failures:
            if failure.pattern.search(request_line) and failure.remaining != 0:
                if failure.remaining is not None:
                    failure.remaining -= 1
                return failure
        return None

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if path.startswith("/fake/"):
            return self._control(method, parts[1:], query)
        if (method, path) in (("GET", "/_ping"), ("HEAD", "/_ping")):
            return 200, "OK"
        if (method, path) == ("GET", "/version"):
            return 200, {"ApiVersion": "1.41", "Version": "20.10.0-fake", "Os": "linux"}
        if (method, path) == ("GET", "/containers/json"):
            return 200, self._list(query)
        if (method, path) == ("POST", "/containers/create"):
            spec = json.loads(body or b"{}")
            name = query.get("name") or f"fake_{secrets.token_hex(4)}"
            return 201, {"Id": self._create(name, spec), "Warnings": []}
        images = re.fullmatch(r"/images/(.+)/json", path)
        if method == "GET" and images:
            if images.group(1) not in self.images:
                raise HttpError(404, f"No such image: {images.group(1)}")
            return 200, {"Id": "sha256:" + "1" * 64, "RepoTags": [images.group(1)]}
        if len(parts) == 3 and parts[0] == "containers":
            container = self._find(parts[1])
            if (method, parts[2]) == ("GET", "json"):
                return 200, container.inspect()
            if (method, parts[2]) == ("POST", "start"):
                if container.running:
                    return 304, None
                self._start(container)
                return 204, None
            if (method, parts[2]) == ("POST", "kill"):
                self.kill(container.id, query.get("signal", "KILL"))
                return 204, None
            if (method, parts[2]) == ("POST", "pause"):
                self.pause(container.id)
                return 204, None
            if (method, parts[2]) == ("POST", "unpause"):
                self.unpause(container.id)
                return 204, None
        if method == "DELETE" and len(parts) == 2 and parts[0] == "containers":
            self.remove(parts[1], force=query.get("force") in ("1", "true"))
            return 204, None
        raise HttpError(404, f"page not found: {method} {path}")

    def _control(self, method: str, parts: list[str], query: dict[str, str]) -> tuple[int, Any]:
        """Out-of-process controls (benchmarks): POST /fake/run?count=N, /fake/kill?id=,
        /fake/remove?id=, /fake/removeall, /fake/drop, /fake/burst?count=N&action=die;
        GET /fake/stats."""
        count = int(query.get("count", "1"))
        if (method, parts) == ("POST", ["run"]):
            return 200, [self.run() for _ in range(count)]
        if (method, parts) == ("POST", ["kill"]):
            self.kill(query["id"])
            return 200, None
        if (method, parts) == ("POST", ["remove"]):
            self.remove(query["id"])
            return 200, None
        if (method, parts) == ("POST", ["removeall"]):
            for container_id in list(self.containers):
                self.remove(container_id, force=True)
            return 200, None
        if (method, parts) == ("POST", ["drop"]):
            self.drop_streams()
            return 200, None
        if (method, parts) == ("POST", ["burst"]):
            return 200, None  # the events were sent in _answer, which can wait
        if (method, parts) == ("GET", ["stats"]):
            return 200, {
                "published": self.published,
                "dropped": self.dropped_events,
                "subscribers": self.subscribers,
                "containers": len(self.containers),
            }
        raise HttpError(404, "unknown control")

    # ---- containers -------------------------------------------------------------------------

    def _find(self, ref: str) -> FakeContainer:
        if ref in self.containers:
            return self.containers[ref]
        found = [c for c in self.containers.values() if c.name == ref or c.id.startswith(ref)]
        if len(found) != 1:
            raise HttpError(404, f"No such container: {ref}")
        return found[0]

    def _create(self, name: str, spec: dict[str, Any]) -> str:
        image = spec.get("Image", "")
        if image not in self.images:
            raise HttpError(404, f"No such image: {image}")
        if any(c.name == name for c in self.containers.values()):
            raise HttpError(409, f'Conflict. The container name "/{name}" is already in use')
        host_config = spec.get("HostConfig") or {}
        container = FakeContainer(
            id=secrets.token_hex(32),
            name=name,
            image=image,
            cmd=list(spec.get("Cmd") or []),
            exposed=dict(spec.get("ExposedPorts") or {}),
            port_bindings=dict(host_config.get("PortBindings") or {}),
        )
        self.containers[container.id] = container
        self._emit("create", container)
        return container.id

    def _start(self, container: FakeContainer) -> None:
        taken = {
            b["HostPort"] for c in self.containers.values() for bs in c.ports.values() for b in bs
        }
        ports: dict[str, list[dict[str, str]]] = {}
        for port, bindings in container.port_bindings.items():
            ports[port] = []
            for binding in bindings:
                host_port = binding.get("HostPort") or str(next(self._next_host_port))
                if host_port in taken:
                    raise HttpError(
                        500, f"Bind for 0.0.0.0:{host_port} failed: port is already allocated"
                    )
                ports[port].append(
                    {"HostIp": binding.get("HostIp") or "0.0.0.0", "HostPort": host_port}
                )
        container.ports = ports
        container.status = "running"
        container.pid = next(self._next_pid)
        self._emit("start", container)

    def _die(self, container: FakeContainer, exit_code: int) -> None:
        container.status, container.exit_code, container.pid = "exited", exit_code, 0
        container.ports = {}
        self._emit("die", container, {"exitCode": str(exit_code)})

    def _list(self, query: dict[str, str]) -> list[dict[str, Any]]:
        filters: dict[str, list[str]] = json.loads(query.get("filters", "{}"))
        show_all = query.get("all") in ("1", "true")
        result = []
        for container in self.containers.values():
            if not (show_all or container.running or "status" in filters):
                continue
            if "status" in filters and container.status not in filters["status"]:
                continue
            if "id" in filters and not any(container.id.startswith(i) for i in filters["id"]):
                continue
            if "name" in filters and not any(n in container.name for n in filters["name"]):
                continue
            result.append(container.summary())
        return result

    # ---- events -----------------------------------------------------------------------------

    def _event(
        self,
        action: str,
        container: FakeContainer,
        attributes: dict[str, str] | None,
        time_nano: int | None,
    ) -> dict[str, Any]:
        if time_nano is None:
            time_nano = max(time.time_ns(), self._last_time_nano + 1)
        self._last_time_nano = max(self._last_time_nano, time_nano)
        return {
            "status": action,
            "id": container.id,
            "from": container.image,
            "Type": "container",
            "Action": action,
            "Actor": {
                "ID": container.id,
                "Attributes": {
                    "image": container.image,
                    "name": container.name,
                    **(attributes or {}),
                },
            },
            "scope": "local",
            "time": time_nano // 1_000_000_000,
            "timeNano": time_nano,
        }

    def _record(self, event: dict[str, Any]) -> None:
        self.log.append(event)
        self.published += 1

    def _emit(
        self,
        action: str,
        container: FakeContainer,
        attributes: dict[str, str] | None = None,
        *,
        time_nano: int | None = None,
    ) -> None:
        # Synchronous controls cannot wait: a full subscriber queue loses the event at once.
        event = self._event(action, container, attributes, time_nano)
        self._record(event)
        if not self.silent:
            self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> None:
        """Hand `event` to every matching subscriber (a subclass may hold or repeat it)."""
        for subscriber in self._subscribers:
            if matches(subscriber.filters, event):
                try:
                    subscriber.send.send_nowait(event)
                except trio.WouldBlock:
                    subscriber.dropped += 1

    async def _events(
        self, stream: trio.SocketStream, conn: h11.Connection, query: dict[str, str]
    ) -> None:
        filters = json.loads(query.get("filters", "{}"))
        if not all(isinstance(v, list) for v in filters.values()):
            # dockerd 20.10 answers a map of strings with a 500, as measured.
            raise HttpError(
                500, "json: cannot unmarshal string into Go value of type map[string]bool"
            )
        since = parse_timestamp(query["since"]) if "since" in query else None
        until = parse_timestamp(query["until"]) if "until" in query else None
        replay = [
            e
            for e in self.log
            if matches(filters, e)
            and (since is not None or until is not None)
            and (since is None or e["timeNano"] >= since)
            and (until is None or e["timeNano"] <= until)
        ]
        send, recv = trio.open_memory_channel[dict[str, Any]](_SUBSCRIBER_QUEUE)
        subscriber = _Subscriber(filters, send)
        self._subscribers.append(subscriber)
        try:
            await stream.send_all(
                conn.send(
                    h11.Response(
                        status_code=200,
                        headers=[
                            ("Content-Type", "application/json"),
                            ("Transfer-Encoding", "chunked"),
                            ("Api-Version", "1.41"),
                        ],
                    )
                )
            )
            await self._write_events(stream, conn, replay)
            if until is not None and until <= time.time_ns():
                await stream.send_all(conn.send(h11.EndOfMessage()))
                return
            with trio.move_on_after((until - time.time_ns()) / 1e9 if until else float("inf")):
                while True:
                    batch = [await recv.receive()]
                    while len(batch) < 256:
                        try:
                            batch.append(recv.receive_nowait())
                        except trio.WouldBlock:
                            break
                    await self._write_events(stream, conn, batch)
            await stream.send_all(conn.send(h11.EndOfMessage()))
        finally:
            self._subscribers.remove(subscriber)
            self._dropped_gone += subscriber.dropped

    async def _write_events(
        self, stream: trio.SocketStream, conn: h11.Connection, events: list[dict[str, Any]]
    ) -> None:
        if not events:
            return
        payload = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events)
        if self.event_chunk_size is None:
            await stream.send_all(conn.send(h11.Data(data=payload)))
            return
        for start in range(0, len(payload), self.event_chunk_size):
            chunk = payload[start : start + self.event_chunk_size]
            await stream.send_all(conn.send(h11.Data(data=chunk)))
            await trio.sleep(0.001)  # let the reader see this chunk on its own


async def _send(stream: trio.SocketStream, conn: h11.Connection, status: int, payload: Any) -> None:
    if status in (204, 304):
        data = b""
        headers: list[tuple[str, str]] = []
    elif isinstance(payload, str):
        data = payload.encode()
        headers = [("Content-Type", "text/plain; charset=utf-8")]
    else:
        data = json.dumps(payload).encode()
        headers = [("Content-Type", "application/json")]
    if status not in (204, 304):
        headers.append(("Content-Length", str(len(data))))
    headers.append(("Api-Version", "1.41"))
    out = conn.send(h11.Response(status_code=status, headers=headers))
    if data:
        out += conn.send(h11.Data(data=data))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)


@asynccontextmanager
async def running_fake_docker(socket_path: str | Path) -> AsyncIterator[FakeDockerEngine]:
    engine = FakeDockerEngine(socket_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.serve)
        try:
            yield engine
        finally:
            nursery.cancel_scope.cancel()


async def _main(socket_path: str) -> None:
    async with running_fake_docker(socket_path):
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(_main, sys.argv[1])
