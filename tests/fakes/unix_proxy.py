"""A byte-pumping proxy between two unix sockets, to cut a real dockerd off from a client.

The real-engine tests cannot stop the machine's dockerd, so the client talks to dockerd
through this proxy; `cut()` drops every proxied connection mid-stream (an `/events` stream
ends abruptly) and `stop_listening()`/`start_listening()` make connects fail meanwhile.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio


class UnixProxy:
    def __init__(self, listen_path: str | Path, target_path: str | Path) -> None:
        self.listen_path = str(listen_path)
        self.target_path = str(target_path)
        self._nursery: trio.Nursery | None = None
        self._listen_scope: trio.CancelScope | None = None
        self._pairs: set[trio.CancelScope] = set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._listen)
            task_status.started()
            await trio.sleep_forever()

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        Path(self.listen_path).unlink(missing_ok=True)
        # Bound synchronously: trio's async bind gives autojump_clock an idle moment in
        # which virtual time could leap while the socket file is missing.
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.bind(self.listen_path)
        raw.listen(64)
        sock = trio.socket.from_stdlib_socket(raw)
        listener = trio.SocketListener(sock)
        with trio.CancelScope() as scope:
            self._listen_scope = scope
            task_status.started()
            try:
                while True:
                    client = await listener.accept()
                    assert self._nursery is not None
                    self._nursery.start_soon(self._proxy, client)
            finally:
                await trio.aclose_forcefully(listener)

    async def _proxy(self, client: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self._pairs.add(scope)
            try:
                upstream = await trio.open_unix_socket(self.target_path)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
            except OSError:
                pass
            finally:
                self._pairs.discard(scope)
        await trio.aclose_forcefully(client)

    def cut(self) -> None:
        for scope in list(self._pairs):
            scope.cancel()

    async def stop_listening(self) -> None:
        if self._listen_scope is not None:
            self._listen_scope.cancel()
            self._listen_scope = None
        self.cut()
        await trio.sleep(0.01)  # let the listener close before callers try to connect

    async def start_listening(self) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._listen)


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()


@asynccontextmanager
async def running_unix_proxy(
    listen_path: str | Path, target_path: str | Path
) -> AsyncIterator[UnixProxy]:
    proxy = UnixProxy(listen_path, target_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
