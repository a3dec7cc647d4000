"""Client of the Fractal webserver's host-service endpoints (contract §4).

Two calls: the start-up handshake (`/host_service/auth`, which gives the AuthToken) and the
heartbeat (`/host_service/heartbeat`). They fail differently on purpose:
- the handshake is retried with capped exponential backoff and jitter until a deadline,
  because without a token the host is useless; missing the deadline is fatal (HandshakeFailed);
- a heartbeat is sent once: a failure is logged and the next heartbeat comes on schedule
  (the webserver judges hosts by heartbeats that stop, so a retry would only blur that).

The AuthToken is a secret: it never appears in logs or exception messages, and neither do
request or response bodies (a heartbeat body carries the token).
"""

from __future__ import annotations

import logging
import random
from typing import Any, NotRequired, TypedDict

import httpx
import trio

from fractal_hostd.hoststate import InstanceMetadata
from fractal_hostd.httpclient import OwnsHttpClient, tls_settings

logger = logging.getLogger(__name__)

AUTH_PATH = "/host_service/auth"
HEARTBEAT_PATH = "/host_service/heartbeat"


class HandshakeFailed(Exception):
    """No AuthToken within the handshake deadline: a fatal start-up condition."""


class HeartbeatPayload(TypedDict):
    """The heartbeat body, field names exactly as the webserver expects them."""

    AuthToken: str
    Timestamp: str
    HeartbeatNumber: int
    InstanceID: str
    InstanceType: str
    TotalRAMinKB: int
    FreeRAMinKB: int
    AvailRAMinKB: int
    IsDyingHeartbeat: bool
    IsDraining: bool
    NumContainers: int
    ShutdownReason: NotRequired[str]


def handshake_body(metadata: InstanceMetadata) -> dict[str, str]:
    return {
        "InstanceID": metadata.instance_id,
        "InstanceType": metadata.instance_type,
        "Region": metadata.region,
        "AWSAmiID": metadata.ami_id,
    }


class WebserverClient(OwnsHttpClient):
    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            verify=tls_settings(self.base_url),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
        )
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not cryptography

    async def handshake(
        self,
        metadata: InstanceMetadata,
        *,
        deadline_s: float = 60.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 8.0,
    ) -> str:
        """POST the instance's identity until the webserver answers 200 {"AuthToken": ...}.

        Between attempts: min(max_backoff, initial_backoff * 2**n) scaled by a uniform
        factor in [0.5, 1.0] (so hosts started together spread out). Raises HandshakeFailed
        when no token arrived within `deadline_s` (including time spent in requests).
        """
        body = handshake_body(metadata)
        attempts = 0
        last_error = "no attempt finished"
        with trio.move_on_after(deadline_s):
            while True:
                attempts += 1
                token, last_error = await self._try_handshake(body)
                if token is not None:
                    logger.info(
                        "handshake with the webserver succeeded", extra={"attempt": attempts}
                    )
                    return token
                delay = min(max_backoff, initial_backoff * 2 ** min(attempts - 1, 30))
                delay *= self._rng.uniform(0.5, 1.0)
                logger.warning(
                    "handshake attempt %d failed: %s; retrying in %.1f s",
                    attempts,
                    last_error,
                    delay,
                )
                await trio.sleep(delay)
        raise HandshakeFailed(
            f"no AuthToken from {self.base_url}{AUTH_PATH} within {deadline_s:g} s "
            f"({attempts} attempt(s); last error: {last_error})"
        )

    async def _try_handshake(self, body: dict[str, str]) -> tuple[str | None, str]:
        """One attempt: (token, "") on success, (None, why) otherwise. Why never holds the token."""
        try:
            response = await self._http.post(AUTH_PATH, json=body)
        except httpx.HTTPError as exc:
            return None, _describe(exc)
        if response.status_code != 200:
            return None, f"status {response.status_code}"
        try:
            answer: Any = response.json()
        except ValueError:
            return None, "answer is not JSON"
        token = answer.get("AuthToken") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            return None, "answer has no AuthToken string"
        return token, ""

    async def send_heartbeat(self, payload: HeartbeatPayload) -> bool:
        """Send one heartbeat; True when the webserver answered 2xx. Never retried, never raises
        (except trio.Cancelled); the response body is read and closed in every case."""
        number = payload["HeartbeatNumber"]
        try:
            response = await self._http.post(HEARTBEAT_PATH, json=payload)
        except httpx.HTTPError as exc:
            logger.warning("heartbeat %d failed: %s", number, _describe(exc))
            return False
        if not response.is_success:
            logger.warning("heartbeat %d failed: status %d", number, response.status_code)
            return False
        return True


def _describe(exc: httpx.HTTPError) -> str:
    # Exception class only: httpx messages are safe today, but a body never belongs in a log.
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
    return f"{kind} ({type(exc).__name__})"
