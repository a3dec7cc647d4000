"""The clients' TLS settings: the CA bundle is loaded once, and never for plain HTTP."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from fractal_hostd.httpclient import tls_settings
from fractal_hostd.metadata.imds import ImdsClient
from fractal_hostd.webserver.client import WebserverClient


async def test_the_clients_load_the_ca_bundle_once_and_only_for_https(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    clients = [
        ImdsClient("http://169.254.169.254"),
        WebserverClient("https://webserver.example"),
        WebserverClient("https://webserver.example"),
        WebserverClient("https://other.example"),
    ]
    for client in clients:
        await client.aclose()
    assert len(loads) <= 1


def test_https_verifies_with_cas_and_plain_http_trusts_nothing() -> None:
    https = tls_settings("https://webserver.example")
    assert https is tls_settings("HTTPS://other.example")
    assert https.verify_mode == ssl.CERT_REQUIRED
    assert https.check_hostname
    assert https.cert_store_stats()["x509_ca"] > 0
    plain = tls_settings("http://169.254.169.254", trust_env=False)
    # Should such a URL ever turn https, it fails closed: no CA, but still verifying.
    assert plain.verify_mode == ssl.CERT_REQUIRED
    assert plain.check_hostname
    assert plain.cert_store_stats()["x509_ca"] == 0
