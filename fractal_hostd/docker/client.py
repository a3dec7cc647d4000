"""A small Docker Engine API client over the unix socket (httpx, no Docker SDK).

Only the calls fractal_hostd needs. Every failure becomes one of three exceptions so callers
never see httpx types:

* `DockerNotFound` (404) / `DockerError` (any other HTTP error): dockerd answered; the
  exception carries the status and Docker's own `message`.
* `DockerUnreachable`: no usable answer (socket missing, connection refused, connection
  dropped mid-response, timeout). The event stream treats this as "reconnect".
  `DockerTimeout`, its subclass, is the timeout case: the caller may ask whether dockerd
  still answers other calls (one container's inspect can hang on that container's lock).

Short per-request timeouts (10 s by default; 60 s for create/start/kill, which dockerd can be
slow to answer on a cold host) keep a wedged dockerd from hanging a caller. The `/events`
stream has no read timeout: it is legitimately silent for hours.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Self
from urllib.parse import quote

import httpx
import trio

from fractal_hostd.docker.jsonstream import JsonStreamDecoder
from fractal_hostd.httpclient import OwnsHttpClient

DEFAULT_TIMEOUT = 10.0
SLOW_CALL_TIMEOUT = 60.0  # create/start/kill: dockerd may take long on a cold host
_STREAM_CONNECT_TIMEOUT = 10.0


class DockerError(Exception):
    """dockerd answered with an HTTP error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Docker API error {status}: {message}")
        self.status = status
        self.message = message


class DockerNotFound(DockerError):
    """404: no such container/image."""


class DockerUnreachable(Exception):
    """No usable answer from dockerd: socket missing, refused, dropped or timed out."""


class DockerTimeout(DockerUnreachable):
    """dockerd did not answer one request in time."""


def _error_from_response(response: httpx.Response) -> DockerError:
    message = response.text.strip()
    try:
        body = json.loads(message)
    except ValueError:
        pass
    else:
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            message = body["message"]
    message = message or response.reason_phrase
    if response.status_code == 404:
        return DockerNotFound(response.status_code, message)
    return DockerError(response.status_code, message)


def _quote(segment: str) -> str:
    return quote(segment, safe="")


class DockerEventStream:
    """Async iterator over decoded `/events` objects of one open response.

    Iteration ends when dockerd ends the response cleanly (only expected with `until`);
    a broken connection raises `DockerUnreachable`.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_raw()
        self._decoder = JsonStreamDecoder()
        self._ready: list[dict[str, Any]] = []
        self._next = 0

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while self._next >= len(self._ready):
            try:
                chunk = await self._chunks.__anext__()
            except httpx.TransportError as exc:
                raise DockerUnreachable(f"event stream dropped: {exc!r}") from exc
            self._ready = self._decoder.feed(chunk)
            self._next = 0
        event = self._ready[self._next]
        self._next += 1
        return event


class DockerClient(OwnsHttpClient):
    def __init__(
        self,
        socket_path: str,
        *,
        api_version: str = "v1.41",
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        # verify=False: plain HTTP over a unix socket never uses TLS, and building the default
        # SSL context (loading the CA bundle) costs 20-110 ms of blocked event loop.
        self._http = httpx.AsyncClient(
            transport=transport or httpx.AsyncHTTPTransport(uds=socket_path, verify=False),
            base_url=f"http://docker/{api_version}",
            timeout=timeout,
            trust_env=False,  # HTTP(S)_PROXY must never apply to the Docker socket
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        request_timeout: float | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method,
                path,
                params=params,
                json=body,
                timeout=request_timeout if request_timeout is not None else self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise DockerTimeout(f"{method} {path}: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise DockerUnreachable(f"{method} {path}: {exc!r}") from exc
        if response.status_code not in ok:
            raise _error_from_response(response)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise DockerError(response.status_code, f"invalid JSON from {path}") from exc

    async def ping(self) -> None:
        await self._request("GET", "/_ping")

    async def version(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/version")
        return result

    async def list_containers(
        self, *, all: bool = False, filters: dict[str, list[str]] | None = None
    ) -> list[dict[str, Any]]:
        params = {"all": "1" if all else "0"}
        if filters:
            params["filters"] = json.dumps(filters)
        result: list[dict[str, Any]] = await self._json("GET", "/containers/json", params=params)
        return result

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/containers/{_quote(container_id)}/json")
        return result

    async def inspect_image(self, name: str) -> dict[str, Any]:
        # Image names hold "/" and ":" which dockerd's router accepts unescaped.
        result: dict[str, Any] = await self._json("GET", f"/images/{quote(name, safe='/:@')}/json")
        return result

    async def create_container(self, name: str, body: dict[str, Any]) -> str:
        result = await self._json(
            "POST",
            "/containers/create",
            params={"name": name},
            body=body,
            request_timeout=SLOW_CALL_TIMEOUT,
            ok=(201,),
        )
        container_id: str = result["Id"]
        return container_id

    async def start_container(self, container_id: str) -> None:
        await self._request(
            "POST",
            f"/containers/{_quote(container_id)}/start",
            request_timeout=SLOW_CALL_TIMEOUT,
            ok=(204, 304),
        )

    async def kill_container(self, container_id: str, *, signal: str = "KILL") -> None:
        await self._request(
            "POST",
            f"/containers/{_quote(container_id)}/kill",
            params={"signal": signal},
            request_timeout=SLOW_CALL_TIMEOUT,
            ok=(204,),
        )

    async def pause_container(self, container_id: str) -> None:
        await self._request("POST", f"/containers/{_quote(container_id)}/pause", ok=(204,))

    async def unpause_container(self, container_id: str) -> None:
        await self._request("POST", f"/containers/{_quote(container_id)}/unpause", ok=(204,))

    async def remove_container(self, container_id: str, *, force: bool = False) -> None:
        await self._request(
            "DELETE",
            f"/containers/{_quote(container_id)}",
            params={"force": "1" if force else "0"},
            request_timeout=SLOW_CALL_TIMEOUT,
            ok=(204,),
        )

    @asynccontextmanager
    async def events(
        self,
        *,
        filters: dict[str, list[str]] | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> AsyncIterator[DockerEventStream]:
        """Open `/events`; yields an async iterator of decoded event dicts.

        The subscription is live once this context is entered (dockerd has answered 200),
        so callers can subscribe first and list containers afterwards without a gap.
        """
        params: dict[str, str] = {}
        if filters:
            params["filters"] = json.dumps(filters)
        if since is not None:
            params["since"] = since
        if until is not None:
            params["until"] = until
        timeout = httpx.Timeout(_STREAM_CONNECT_TIMEOUT, read=None)
        request = self._http.build_request("GET", "/events", params=params, timeout=timeout)
        # read=None also covers the response headers: bound the wait for them separately, or
        # a wedged dockerd that accepts but never answers would hold the caller forever.
        response: httpx.Response | None = None
        with trio.move_on_after(_STREAM_CONNECT_TIMEOUT):
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise DockerUnreachable(f"GET /events: {exc!r}") from exc
        if response is None:
            raise DockerUnreachable(f"GET /events: no answer within {_STREAM_CONNECT_TIMEOUT} s")
        try:
            if response.status_code != 200:
                try:
                    await response.aread()
                except httpx.TransportError as exc:
                    raise DockerUnreachable(f"GET /events: {exc!r}") from exc
                raise _error_from_response(response)
            yield DockerEventStream(response)
        finally:
            await response.aclose()
