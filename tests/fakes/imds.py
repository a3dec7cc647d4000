"""A fake EC2 instance metadata service on 127.0.0.1:0 that enforces IMDSv2 like the real one.

    async with running_fake_imds() as imds:
        ... FRACTAL_IMDS_URL=imds.url ...
        imds.schedule_spot("terminate", after=3)

Protocol (as measured against EC2 docs; `moto` does not enforce v2, hence this fake):
- `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..21600` -> 200 token;
  a missing or out-of-range TTL -> 400. Tokens expire after their TTL in trio time
  (`trio.current_time()`), so MockClock.jump() expires them in virtual time.
- GET `/latest/meta-data/<path>` -> 200 text / 404. In mode "v2-required" (the default, like
  HttpTokens=required) a GET without a valid, unexpired token -> 401; "v2-optional" also
  serves token-less GETs; "v1-only" answers the token PUT with `v1_put_status` (404) and
  ignores tokens.
- `spot/instance-action` and `events/recommendations/rebalance` are 404 until a notice is
  scheduled and its time (trio time) has come.
Failure knobs: `fail_status` (every request answers it, e.g. 500), `fail_next` (the next N
requests answer 500), `stalled` (a request arriving while it is True never gets an answer),
`revoke_tokens()`.
Every request is recorded in `requests` as (method, path, status or None while hanging).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal

import trio
from quart import Response, request
from quart_trio import QuartTrio

from tests.fakes.webserver import serving

Mode = Literal["v2-required", "v2-optional", "v1-only"]

DEFAULT_METADATA = {
    "ami-id": "ami-0123456789abcdef0",
    "ami-launch-index": "0",
    "instance-id": "i-0fake0000000000001",
    "instance-type": "g4dn.xlarge",
    "placement/region": "us-east-1",
    "placement/availability-zone": "us-east-1a",
    "public-ipv4": "203.0.113.7",
    "local-ipv4": "10.1.2.3",
}

SPOT_PATH = "spot/instance-action"
REBALANCE_PATH = "events/recommendations/rebalance"


def _imds_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Scheduled:
    visible_at: float  # trio time
    body: str


class FakeImds:
    def __init__(self, *, mode: Mode = "v2-required", metadata: dict[str, str] | None = None):
        self.url = ""
        self.mode: Mode = mode
        self.v1_put_status = 404
        self.metadata = dict(DEFAULT_METADATA if metadata is None else metadata)
        self.fail_status: int | None = None
        self.fail_next = 0
        self.stalled = False
        self.requests: list[tuple[str, str, int | None]] = []
        self.token_requests = 0
        self._tokens: dict[str, float] = {}  # token -> expiry (trio time)
        self._notices: dict[str, _Scheduled] = {}
        self.app = self._make_app()

    # --- knobs -----------------------------------------------------------------------------
    def revoke_tokens(self) -> None:
        """Forget all tokens, like an IMDS restart: the next GETs with old tokens get 401."""
        self._tokens.clear()

    def schedule_spot(
        self, action: str = "terminate", *, time: str | None = None, after: float = 0.0
    ) -> None:
        """Show a spot interruption notice `after` seconds from now (trio time)."""
        when = time or _imds_time(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
        self._schedule(SPOT_PATH, {"action": action, "time": when}, after)

    def schedule_rebalance(self, *, notice_time: str | None = None, after: float = 0.0) -> None:
        when = notice_time or _imds_time(dt.datetime.now(dt.UTC))
        self._schedule(REBALANCE_PATH, {"noticeTime": when}, after)

    def clear_notices(self) -> None:
        self._notices.clear()

    def _schedule(self, path: str, body: dict[str, str], after: float) -> None:
        self._notices[path] = _Scheduled(trio.current_time() + after, json.dumps(body))

    # --- protocol --------------------------------------------------------------------------
    def _token_valid(self, token: str | None) -> bool:
        if token is None:
            return False
        expiry = self._tokens.get(token)
        return expiry is not None and trio.current_time() < expiry

    def _put_token(self, ttl_header: str | None) -> tuple[str, int]:
        self.token_requests += 1
        if self.mode == "v1-only":
            return "", self.v1_put_status
        try:
            ttl = int(ttl_header or "")
        except ValueError:
            return "", 400
        if not 1 <= ttl <= 21600:
            return "", 400
        token = secrets.token_urlsafe(24)
        self._tokens[token] = trio.current_time() + ttl
        return token, 200

    def _get_meta(self, path: str, token: str | None) -> tuple[str, int]:
        if self.mode == "v2-required" and not self._token_valid(token):
            return "", 401
        if self.mode == "v2-optional" and token is not None and not self._token_valid(token):
            return "", 401
        notice = self._notices.get(path)
        if notice is not None:
            if trio.current_time() >= notice.visible_at:
                return notice.body, 200
            return "", 404
        value = self.metadata.get(path)
        return (value, 200) if value is not None else ("", 404)

    def _make_app(self) -> QuartTrio:
        app = QuartTrio(__name__)

        async def answer(method: str, path: str, compute: Any) -> Response:
            index = len(self.requests)
            self.requests.append((method, path, None))
            if self.stalled:
                await trio.sleep_forever()
            if self.fail_next > 0:
                self.fail_next -= 1
                body, status = "", 500
            elif self.fail_status is not None:
                body, status = "", self.fail_status
            else:
                body, status = compute()
            self.requests[index] = (method, path, status)
            return Response(body, status=status, content_type="text/plain")

        @app.route("/latest/api/token", methods=["PUT"])
        async def token() -> Response:
            ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            return await answer("PUT", "/latest/api/token", lambda: self._put_token(ttl))

        @app.get("/latest/meta-data/<path:path>")
        async def meta(path: str) -> Response:
            token = request.headers.get("X-aws-ec2-metadata-token")
            return await answer(
                "GET", f"/latest/meta-data/{path}", lambda: self._get_meta(path, token)
            )

        return app


def running_fake_imds(**kwargs: Any) -> AbstractAsyncContextManager[FakeImds]:
    return serving(FakeImds(**kwargs))


async def _main() -> None:
    """`python -m tests.fakes.imds`: an IMDSv2 on loopback for manual runs; prints its URL."""
    async with running_fake_imds() as fake:
        print(fake.url, flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    try:
        trio.run(_main)
    except* KeyboardInterrupt:
        pass  # Ctrl-C: the normal way to stop it
