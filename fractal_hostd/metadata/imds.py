"""Client of the EC2 instance metadata service (IMDS), and the start-up metadata read.

Token protocol (IMDSv2): `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
gives a session token that every GET carries in `X-aws-ec2-metadata-token`. The token is
renewed `refresh_margin` seconds before its TTL runs out, and again whenever IMDS answers 401
(it expired early, or IMDS restarted and forgot it); the request is then repeated once.

IMDSv1 fallback: only when the token PUT is answered, but not as IMDSv2 would: 403, 404 or 405
(the same set the AWS SDKs use: an IMDS or proxy without the token endpoint, or one that
refuses PUT). A timeout, a connection error or a 5xx is NOT a reason to fall back: it is an
ordinary failure that the caller retries, so a briefly sick IMDS never downgrades us to v1.
A later 401 in v1 mode means v2 became required: we fetch a token and stay on v2.

Timeouts are short (1 s connect/read): IMDS is a link-local service that answers in
milliseconds or not at all.
"""

from __future__ import annotations

import logging
import socket

import httpx
import trio

from fractal_hostd.hoststate import InstanceMetadata
from fractal_hostd.httpclient import OwnsHttpClient, tls_settings

logger = logging.getLogger(__name__)

META_DATA_PREFIX = "/latest/meta-data/"
TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a path, not a secret
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"  # noqa: S105 - a header name
MAX_TOKEN_TTL = 21600  # IMDS rejects longer TTLs with 400
_V1_FALLBACK_STATUSES = frozenset({403, 404, 405})


class ImdsError(Exception):
    """IMDS did not answer usefully (timeout, connection error, unexpected status)."""


class MetadataUnavailable(Exception):
    """The start-up metadata read gave up; the message names what was missing."""


def local_metadata(hostname: str) -> InstanceMetadata:
    """Static metadata for hosts without IMDS (`FRACTAL_IMDS_URL=off`, localdev)."""
    return InstanceMetadata(
        ami_id="ami-localdev",
        ami_launch_index="0",
        instance_id=f"localdev-{hostname}",
        instance_type="localdev",
        region="localdev",
        availability_zone="localdev",
        public_ipv4=None,
    )


LOCAL_METADATA: InstanceMetadata = local_metadata(socket.gethostname())


class ImdsClient(OwnsHttpClient):
    """Reads paths under /latest/meta-data/ with IMDSv2 tokens (v1 fallback, see module doc)."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        token_ttl: int = MAX_TOKEN_TTL,
        refresh_margin: float = 60.0,
        timeout: float = 1.0,
    ) -> None:
        if not 1 <= token_ttl <= MAX_TOKEN_TTL:
            raise ValueError(f"token_ttl must be within 1..{MAX_TOKEN_TTL}, got {token_ttl}")
        self.base_url = base_url.rstrip("/")
        self._token_ttl = token_ttl
        # A margin as long as the TTL would renew before every request.
        self._refresh_margin = min(refresh_margin, token_ttl / 2)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            verify=tls_settings(self.base_url, trust_env=False),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,  # IMDS is link-local: never through an HTTP(S)_PROXY
        )
        self._token: str | None = None
        self._token_renew_at = 0.0
        self._v1 = False
        self._token_lock = trio.Lock()

    @property
    def uses_v1(self) -> bool:
        return self._v1

    async def get(self, path: str) -> str | None:
        """Text of `/latest/meta-data/<path>`; None when IMDS answers 404 (not present)."""
        url = META_DATA_PREFIX + path.lstrip("/")
        response = await self._get_with_token(url)
        if response.status_code == 401:
            # The token expired or IMDS forgot it (or v2 became required): renew once.
            self._token = None
            self._v1 = False
            response = await self._get_with_token(url)
        if response.status_code == 200:
            return response.text
        if response.status_code == 404:
            return None
        raise ImdsError(f"IMDS answered {response.status_code} for {url}")

    async def _get_with_token(self, url: str) -> httpx.Response:
        token = await self._current_token()
        headers = {TOKEN_HEADER: token} if token is not None else {}
        return await self._request("GET", url, headers)

    async def _current_token(self) -> str | None:
        async with self._token_lock:  # concurrent getters share one token PUT
            if self._v1:
                return None
            if self._token is None or trio.current_time() >= self._token_renew_at:
                await self._fetch_token()
            return self._token

    async def _fetch_token(self) -> None:
        requested_at = trio.current_time()
        response = await self._request("PUT", TOKEN_PATH, {TTL_HEADER: str(self._token_ttl)})
        if response.status_code == 200 and response.text:
            self._token = response.text
            self._token_renew_at = requested_at + self._token_ttl - self._refresh_margin
            self._v1 = False
        elif response.status_code in _V1_FALLBACK_STATUSES:
            logger.warning(
                "IMDS token endpoint answered %d: falling back to IMDSv1",
                response.status_code,
                extra={"imds_url": self.base_url},
            )
            self._token = None
            self._v1 = True
        else:
            raise ImdsError(f"IMDS answered {response.status_code} for the token request")

    async def _request(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._http.request(method, url, headers=headers)
        except httpx.TimeoutException as exc:
            raise ImdsError(f"IMDS timed out on {method} {url}") from exc
        except httpx.HTTPError as exc:
            # The error first: "…/api/token: X" would read as a secret to the log redaction.
            raise ImdsError(f"IMDS unreachable ({type(exc).__name__}) on {method} {url}") from exc


# Field of InstanceMetadata -> IMDS path. public-ipv4 is optional: 404 is normal without one.
_REQUIRED_PATHS = {
    "ami_id": "ami-id",
    "ami_launch_index": "ami-launch-index",
    "instance_id": "instance-id",
    "instance_type": "instance-type",
    "region": "placement/region",
    "availability_zone": "placement/availability-zone",
}
_OPTIONAL_PATHS = {"public_ipv4": "public-ipv4", "local_ipv4": "local-ipv4"}


async def fetch_metadata(
    client: ImdsClient,
    *,
    attempts: int = 4,
    backoff: float = 0.5,
    max_backoff: float = 2.0,
    total_timeout: float = 10.0,
) -> InstanceMetadata:
    """Read the instance's metadata with bounded retries.

    Values already read are kept between attempts (so a retry asks only for what is
    missing). Attempts are separated by a doubling backoff; the whole read is bounded by
    `total_timeout` as well, since a stalling IMDS costs a full request timeout per path.
    Raises MetadataUnavailable naming the missing paths and the last error.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    found: dict[str, str | None] = {}
    last_error = "no attempt finished"
    attempts_made = 0
    delay = backoff
    with trio.move_on_after(total_timeout) as deadline:
        for attempt in range(1, attempts + 1):
            attempts_made = attempt
            try:
                await _read_missing(client, found)
            except ImdsError as exc:
                last_error = str(exc)
                logger.warning(
                    "reading instance metadata failed (attempt %d of %d): %s",
                    attempt,
                    attempts,
                    exc,
                )
            else:
                return _metadata_from(found)
            if attempt < attempts:
                await trio.sleep(delay)
                delay = min(delay * 2, max_backoff)
    if deadline.cancelled_caught:
        last_error = f"gave up after {total_timeout:g} s; last error: {last_error}"
    missing = [path for field, path in _REQUIRED_PATHS.items() if found.get(field) is None]
    raise MetadataUnavailable(
        f"instance metadata unavailable from {client.base_url}: missing "
        f"{', '.join(missing)} after {attempts_made} attempt(s) ({last_error})"
    )


async def _read_missing(client: ImdsClient, found: dict[str, str | None]) -> None:
    for field, path in _REQUIRED_PATHS.items():
        if found.get(field) is None:
            value = await client.get(path)
            if value is None:
                raise ImdsError(f"IMDS has no {path} (404)")
            found[field] = value.strip()
    for field, path in _OPTIONAL_PATHS.items():
        if field not in found:
            value = await client.get(path)
            found[field] = value.strip() if value is not None else None


def _metadata_from(found: dict[str, str | None]) -> InstanceMetadata:
    def required(field: str) -> str:
        value = found[field]
        assert value is not None  # _read_missing only returns once every one is set
        return value

    return InstanceMetadata(
        ami_id=required("ami_id"),
        ami_launch_index=required("ami_launch_index"),
        instance_id=required("instance_id"),
        instance_type=required("instance_type"),
        region=required("region"),
        availability_zone=required("availability_zone"),
        public_ipv4=found["public_ipv4"],
        local_ipv4=found["local_ipv4"],
    )
