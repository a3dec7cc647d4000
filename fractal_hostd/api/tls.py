"""The HTTPS API's self-signed certificate, made fresh at every start-up (contract §5).

Why self-signed and regenerated: the webserver talks to hosts by IP address and the original
service did the same; a fresh pair per start means a key never outlives the process that used
it (the private directory is removed by the shutdown report). ECDSA P-256 because generating
it takes about a millisecond, where RSA-2048 takes ~50-100 ms of a shared core at start-up, and
every TLS 1.2/1.3 client speaks it.

The subject alternative names cover loopback (`fractal-hostd status`, tests) and whatever
addresses the caller knows the host by (public/private IPv4 from instance metadata), so a
client that pins this certificate can also verify the name it dialled.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fractal_hostd import safefs

CERT_FILE_NAME = "cert.pem"
KEY_FILE_NAME = "key.pem"
# Short: the pair is regenerated at every start, so it only needs to outlive one run of the
# service. Hosts are replaced well within this.
DEFAULT_VALIDITY = dt.timedelta(days=90)
# Clients whose clocks run a little behind must not see a certificate "from the future".
_BACKDATE = dt.timedelta(minutes=5)
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    certfile: Path
    keyfile: Path


def generate_certificate(
    private_dir: Path,
    *,
    extra_names: Iterable[str] = (),
    validity: dt.timedelta = DEFAULT_VALIDITY,
    now: dt.datetime | None = None,
) -> TlsFiles:
    """Write a new key (0600) and certificate into `private_dir` (created 0700), return paths.

    `extra_names` are IP addresses or DNS names to add to the certificate's SAN besides
    localhost, 127.0.0.1, ::1 and this machine's hostname. Raises ValueError for a name that
    is neither an IP address nor a valid DNS name.
    """
    names = _subject_alt_names([*_LOOPBACK_NAMES, *_own_hostname(), *extra_names])
    key = ec.generate_private_key(ec.SECP256R1())
    issued = (now or dt.datetime.now(dt.UTC)) - _BACKDATE
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fractal-hostd")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued)
        .not_valid_after(issued + _BACKDATE + validity)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # A CA:TRUE self-signed leaf lets clients use the cert file itself as their trust root.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _make_private_dir(private_dir)
    files = TlsFiles(certfile=private_dir / CERT_FILE_NAME, keyfile=private_dir / KEY_FILE_NAME)
    _write_atomically(files.keyfile, key_pem, mode=0o600)
    _write_atomically(files.certfile, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def _own_hostname() -> list[str]:
    # Best effort: a hostname that is not a valid DNS name is left out rather than fatal.
    name = socket.gethostname()
    try:
        return [_checked_dns_name(name)]
    except ValueError:
        return []


def _subject_alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in names:
        name = raw.strip()
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(_checked_dns_name(name)))
    return result


def _checked_dns_name(name: str) -> str:
    labels = name.rstrip(".").split(".")
    valid = (
        name.isascii()
        and len(name) <= 253
        and all(
            0 < len(label) <= 63
            and label[0] != "-"
            and label[-1] != "-"
            and all(c.isalnum() or c in "-_" for c in label)
            for label in labels
        )
    )
    if not valid:
        raise ValueError(f"not an IP address or DNS name: {name!r}")
    return name


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing directory.
    os.chmod(path, 0o700)


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Created with its final mode (the key is never world-readable), never through a link."""
    with safefs.opened(safefs.open_root(path.parent)) as dir_fd:
        safefs.write_file(dir_fd, path.name, data, mode=mode)
