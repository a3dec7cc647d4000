"""What every client of the outside world shares: it owns one httpx client and closes it,
and its TLS settings come from one place.

Left to itself, every `httpx.AsyncClient` builds its own SSL context and loads the CA bundle
into it (certifi: ~20-40 ms of CPU each, before READY, blocking the loop), even a client
that only ever speaks plain HTTP (IMDS). `tls_settings` gives every HTTPS client the same
verifying context, built once, and a plain-HTTP client one that loads no CA at all: it still
verifies (certificate and host name required), so a URL changed to https fails closed.
"""

from __future__ import annotations

import functools
import ssl
from types import TracebackType
from typing import Self

import httpx


def tls_settings(url: str, *, trust_env: bool = True) -> ssl.SSLContext:
    """The `verify=` of a client whose base URL is `url` (see the module doc).

    `trust_env` as the client's: with it, SSL_CERT_FILE / SSL_CERT_DIR choose the CAs, as
    httpx's own default does."""
    if url.lower().startswith("https:"):
        return _verifying_context(trust_env)
    return _no_ca_context()


@functools.cache
def _verifying_context(trust_env: bool) -> ssl.SSLContext:
    return httpx.create_ssl_context(verify=True, trust_env=trust_env)


@functools.cache
def _no_ca_context() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname


class OwnsHttpClient:
    """`aclose()` and `async with` for a class whose `_http` is its own httpx.AsyncClient."""

    _http: httpx.AsyncClient

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
