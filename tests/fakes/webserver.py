"""A fake Fractal webserver (host_service/auth and host_service/heartbeat) on 127.0.0.1:0.

Real HTTP (hypercorn + quart-trio) so that the service, in-process or as a subprocess, talks
to it exactly as to the real one. Usage, inside a trio test:

    async with running_fake_webserver() as ws:
        ... FRACTAL_WEBSERVER_URL=ws.url ...
        await ws.wait_for_heartbeats(1)
        assert ws.heartbeats[0]["HeartbeatNumber"] == 0

Knobs (plain attributes, change them any time):
- `handshake_failures`/`handshake_failure_status`: answer the first N handshakes with that status;
- `handshake_status`: answer every handshake with this status (None: normal 200 + token);
- `handshake_blackhole` / `heartbeat_blackhole`: accept the request and never answer;
- `heartbeat_status`: status for heartbeats (default 200);
- `check_token`: answer 401 to heartbeats whose AuthToken is not `token`.
Records decoded JSON bodies in `handshakes` and `heartbeats` (also the unanswered ones).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import hypercorn.trio
import trio
from hypercorn.config import Config
from quart import Response, jsonify, request
from quart_trio import QuartTrio


@asynccontextmanager
async def serve_on_loopback(
    app: QuartTrio, *, graceful_timeout: float | None = None
) -> AsyncIterator[str]:
    """Serve `app` on 127.0.0.1, any free port; yields `http://127.0.0.1:PORT`; stops on exit."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    # Tests jump trio's clock (token expiry); a jump past hypercorn's keep-alive timeout races
    # the server's idle-close against the client's next request on that connection.
    config.keep_alive_timeout = 3600
    if graceful_timeout is not None:
        config.graceful_timeout = graceful_timeout
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(functools.partial(hypercorn.trio.serve, app, config))
        try:
            yield urls[0]
        finally:
            nursery.cancel_scope.cancel()


class FakeWebserver:
    def __init__(self, *, token: str = "fake-webserver-auth-token") -> None:
        self.url = ""
        self.token = token
        self.handshakes: list[Any] = []
        self.heartbeats: list[Any] = []
        self.handshake_failures = 0
        self.handshake_failure_status = 503
        self.handshake_status: int | None = None
        self.handshake_blackhole = False
        self.heartbeat_status = 200
        self.heartbeat_blackhole = False
        self.check_token = True
        self._changed = trio.Condition()
        self.app = self._make_app()

    async def wait_for_heartbeats(self, count: int) -> list[Any]:
        """Wait until `count` heartbeats arrived (bound it with trio.fail_after)."""
        async with self._changed:
            while len(self.heartbeats) < count:
                await self._changed.wait()
        return self.heartbeats

    async def wait_for_handshakes(self, count: int) -> list[Any]:
        async with self._changed:
            while len(self.handshakes) < count:
                await self._changed.wait()
        return self.handshakes

    async def _record(self, into: list[Any], body: Any) -> None:
        into.append(body)
        async with self._changed:
            self._changed.notify_all()

    def _make_app(self) -> QuartTrio:
        app = QuartTrio(__name__)

        @app.post("/host_service/auth")
        async def auth() -> Response | tuple[Response, int]:
            await self._record(self.handshakes, await request.get_json(force=True, silent=True))
            if self.handshake_blackhole:
                await trio.sleep_forever()
            if self.handshake_failures > 0:
                self.handshake_failures -= 1
                return jsonify({"error": "not now"}), self.handshake_failure_status
            if self.handshake_status is not None:
                return jsonify({"error": "configured status"}), self.handshake_status
            return jsonify({"AuthToken": self.token})

        @app.post("/host_service/heartbeat")
        async def heartbeat() -> Response | tuple[Response, int]:
            body = await request.get_json(force=True, silent=True)
            await self._record(self.heartbeats, body)
            if self.heartbeat_blackhole:
                await trio.sleep_forever()
            if self.check_token and (
                not isinstance(body, dict) or body.get("AuthToken") != self.token
            ):
                return jsonify({"error": "unauthorized"}), 401
            return jsonify({}), self.heartbeat_status

        return app


class ServedFake(Protocol):
    app: QuartTrio
    url: str


Fake = TypeVar("Fake", bound=ServedFake)


@asynccontextmanager
async def serving(fake: Fake) -> AsyncIterator[Fake]:
    """Serve `fake.app` on loopback for the duration of the block, with `fake.url` set."""
    async with serve_on_loopback(fake.app) as url:
        fake.url = url
        yield fake


def running_fake_webserver(**kwargs: Any) -> AbstractAsyncContextManager[FakeWebserver]:
    return serving(FakeWebserver(**kwargs))


async def _main() -> None:
    """`python -m tests.fakes.webserver`: print the URL, then each call as a JSON line."""
    async with running_fake_webserver() as fake:
        print(fake.url, flush=True)
        shown = {"handshake": 0, "heartbeat": 0}
        while True:
            await fake.wait_for_heartbeats(shown["heartbeat"] + 1)
            for kind, calls in (("handshake", fake.handshakes), ("heartbeat", fake.heartbeats)):
                for call in calls[shown[kind] :]:
                    print(json.dumps({kind: call}), flush=True)
                shown[kind] = len(calls)


if __name__ == "__main__":
    try:
        trio.run(_main)
    except* KeyboardInterrupt:
        pass  # Ctrl-C: the normal way to stop it
