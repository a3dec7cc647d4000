"""The self-signed certificate: names, key type, validity, file modes.

Test rules: no network; files only under tmp_path.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from fractal_hostd.api.tls import DEFAULT_VALIDITY, generate_certificate


def _names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return ips, set(san.get_values_for_type(x509.DNSName))


def test_writes_an_ecdsa_pair_with_private_modes(tmp_path: Path) -> None:
    private = tmp_path / "private"
    files = generate_certificate(private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE(files.keyfile.stat().st_mode) == 0o600
    key = load_pem_private_key(files.keyfile.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    cert = x509.load_pem_x509_certificate(files.certfile.read_bytes())
    assert cert.public_key() == key.public_key()
    assert sorted(p.name for p in private.iterdir()) == ["cert.pem", "key.pem"]


def test_tightens_an_existing_private_dir(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    private.chmod(0o755)
    generate_certificate(private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


def test_san_covers_loopback_hostname_and_extra_names(tmp_path: Path) -> None:
    files = generate_certificate(
        tmp_path, extra_names=["203.0.113.7", "10.0.0.5", "host.example.com", "", "127.0.0.1"]
    )
    cert = x509.load_pem_x509_certificate(files.certfile.read_bytes())
    ips, dns = _names(cert)
    assert {"127.0.0.1", "::1", "203.0.113.7", "10.0.0.5"} <= ips
    assert {"localhost", "host.example.com"} <= dns
    assert all(ipaddress.ip_address(ip) for ip in ips)


def test_validity_is_short_and_starts_before_now(tmp_path: Path) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    files = generate_certificate(tmp_path, now=now)
    cert = x509.load_pem_x509_certificate(files.certfile.read_bytes())
    assert cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc == now + DEFAULT_VALIDITY


@pytest.mark.parametrize("bad", ["not a name!", "-leading.example", "é.example", "a" * 64 + ".com"])
def test_rejects_a_name_that_is_neither_ip_nor_dns(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or DNS name"):
        generate_certificate(tmp_path, extra_names=[bad])
    assert not (tmp_path / "key.pem").exists()


def test_regenerating_replaces_the_pair(tmp_path: Path) -> None:
    first = generate_certificate(tmp_path)
    old_key = first.keyfile.read_bytes()
    second = generate_certificate(tmp_path)
    assert second == first
    assert second.keyfile.read_bytes() != old_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem"]


def test_python_ssl_loads_the_pair_and_trusts_the_cert(tmp_path: Path) -> None:
    files = generate_certificate(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.certfile, files.keyfile)
    client = ssl.create_default_context(cafile=str(files.certfile))
    assert client.get_ca_certs()[0]["subject"] == ((("commonName", "fractal-hostd"),),)


def test_an_odd_hostname_is_left_out_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "bad host name")
    files = generate_certificate(tmp_path)
    _, dns = _names(x509.load_pem_x509_certificate(files.certfile.read_bytes()))
    assert dns == {"localhost"}
