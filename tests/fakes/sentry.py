"""A fake Sentry ingest endpoint on 127.0.0.1:0 that decodes envelopes.

Real HTTP (hypercorn + quart-trio), so the real sentry-sdk transport thread (in-process) or the
service run as a subprocess reports to it exactly as to sentry.io. Usage, inside a trio test:

    async with running_fake_sentry() as sentry:
        init_sentry(dsn=sentry.dsn, ...)          # or SENTRY_DSN=sentry.dsn for a subprocess
        ...
        events = await sentry.wait_for_events(1)  # bound it with trio.fail_after
        assert events[0]["level"] == "fatal"

The sender's thread does blocking HTTP: the test must await (wait_for_events, trio.sleep, a
trio.to_thread flush) while it waits, so that this server, in the test's own trio loop, answers.

`blackhole=True` (or set `sentry.blackhole` later): accept requests and never answer, to test
that flushing stays within its budget when Sentry hangs.

Run standalone (`python -m tests.fakes.sentry`) it prints the DSN, then one JSON line per
envelope item received: handy for checking `make runprod`-style runs by hand.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import sentry_sdk
import trio
from quart import Response, request
from quart_trio import QuartTrio

from tests.fakes.webserver import serve_on_loopback

PUBLIC_KEY = "fakepublickey"
PROJECT_ID = "1"


@dataclass
class EnvelopeItem:
    headers: dict[str, Any]
    payload: Any  # decoded JSON when the item is JSON, else the raw bytes


@dataclass
class Envelope:
    headers: dict[str, Any]
    items: list[EnvelopeItem]
    request_headers: dict[str, str]


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[EnvelopeItem]]:
    """Decode Sentry's envelope format: a header line, then (item header, payload) pairs.

    A payload is `length` bytes when the item header gives a length, else runs to the newline.
    """
    header_line, _, rest = body.partition(b"\n")
    headers = json.loads(header_line)
    items: list[EnvelopeItem] = []
    pos = 0
    while pos < len(rest):
        end = rest.find(b"\n", pos)
        line = rest[pos:] if end < 0 else rest[pos:end]
        pos = len(rest) if end < 0 else end + 1
        if not line.strip():
            continue
        item_headers = json.loads(line)
        length = item_headers.get("length")
        if length is None:
            end = rest.find(b"\n", pos)
            raw = rest[pos:] if end < 0 else rest[pos:end]
            pos = len(rest) if end < 0 else end + 1
        else:
            raw = rest[pos : pos + length]
            pos += length
            if rest[pos : pos + 1] == b"\n":
                pos += 1
        items.append(EnvelopeItem(item_headers, _decode_payload(raw)))
    return headers, items


def _decode_payload(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw


class FakeSentry:
    def __init__(self, *, blackhole: bool = False) -> None:
        self.blackhole = blackhole
        self.port = 0
        self.envelopes: list[Envelope] = []
        self.requests_seen = 0  # including unanswered (blackholed) ones
        self._changed = trio.Condition()
        self.app = self._make_app()

    @property
    def dsn(self) -> str:
        return f"http://{PUBLIC_KEY}@127.0.0.1:{self.port}/{PROJECT_ID}"

    def items(self, item_type: str) -> list[Any]:
        """Payloads of every received item of one type ("event", "client_report", ...)."""
        return [
            item.payload
            for envelope in self.envelopes
            for item in envelope.items
            if item.headers.get("type") == item_type
        ]

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.items("event")

    async def wait_for_events(self, count: int) -> list[dict[str, Any]]:
        """Wait until `count` error events arrived (bound it with trio.fail_after)."""
        async with self._changed:
            while len(self.events) < count:
                await self._changed.wait()
        return self.events

    async def wait_for_requests(self, count: int) -> None:
        async with self._changed:
            while self.requests_seen < count:
                await self._changed.wait()

    async def _record(self, envelope: Envelope | None) -> None:
        async with self._changed:
            self.requests_seen += 1
            if envelope is not None:
                self.envelopes.append(envelope)
            self._changed.notify_all()

    def _make_app(self) -> QuartTrio:
        app = QuartTrio(__name__)

        @app.post("/api/<project>/envelope/")
        async def envelope(project: str) -> Response:
            body = await request.get_data(as_text=False)
            assert isinstance(body, bytes)
            if self.blackhole:
                await self._record(None)
                await trio.sleep_forever()
            if request.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            headers, items = parse_envelope(body)
            await self._record(Envelope(headers, items, dict(request.headers)))
            return Response(
                json.dumps({"id": headers.get("event_id")}), 200, content_type="application/json"
            )

        return app


@asynccontextmanager
async def running_fake_sentry(*, blackhole: bool = False) -> AsyncIterator[FakeSentry]:
    """Serve a FakeSentry on 127.0.0.1, any free port, for the duration of the block."""
    sentry = FakeSentry(blackhole=blackhole)
    async with serve_on_loopback(sentry.app, graceful_timeout=0) as url:
        sentry.port = int(url.rsplit(":", 1)[1])
        yield sentry


def reset_sentry() -> None:
    """Undo `sentry_sdk.init` between tests: close the client, drop it, clear the scopes."""
    sentry_sdk.get_client().close(timeout=0)
    for scope in (
        sentry_sdk.get_global_scope(),
        sentry_sdk.get_isolation_scope(),
        sentry_sdk.get_current_scope(),
    ):
        scope.clear()
    sentry_sdk.get_global_scope().set_client(None)


async def _main() -> None:
    async with running_fake_sentry() as sentry:
        print(sentry.dsn, flush=True)
        shown = 0
        while True:
            await sentry.wait_for_requests(sentry.requests_seen + 1)
            for envelope in sentry.envelopes[shown:]:
                for item in envelope.items:
                    payload = (
                        item.payload if not isinstance(item.payload, bytes) else repr(item.payload)
                    )
                    print(
                        json.dumps({"type": item.headers.get("type"), "payload": payload}),
                        flush=True,
                    )
            shown = len(sentry.envelopes)


if __name__ == "__main__":
    try:
        trio.run(_main)
    except* KeyboardInterrupt:
        pass  # Ctrl-C: the normal way to stop it
