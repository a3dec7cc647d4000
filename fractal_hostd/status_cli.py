"""`fractal-hostd status`: ask the running service's API for GET /status and print it.

The API's certificate is self-signed and regenerated at every start, so by default the
connection is encrypted but the certificate not verified (`insecure=True`): the command runs
on the host itself, against loopback. Exit 0 with a readable report, or 1 with one line.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx

TIMEOUT_SECONDS = 5.0
_PROG = "fractal-hostd status"


def status_main(*, url: str, secret: str, insecure: bool = True) -> int:
    if not secret:
        _fail(
            "no API secret found (set FRACTAL_WEBSERVER_AUTH_SECRET or _FILE, "
            "or run as a user who can read FRACTAL_PRIVATE_DIR/auth_secret)"
        )
        return 1
    try:
        with httpx.Client(verify=not insecure, timeout=TIMEOUT_SECONDS) as client:
            response = client.get(
                f"{url.rstrip('/')}/status", headers={"Authorization": f"Bearer {secret}"}
            )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the API at {url}: {exc or type(exc).__name__}")
        return 1
    if response.status_code == 401:
        _fail(f"the API at {url} refused the secret (401 unauthorized)")
        return 1
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code != 200 or not isinstance(document, dict):
        _fail(f"unexpected answer from {url}/status: HTTP {response.status_code}")
        return 1
    print(format_status(document))
    return 0


def format_status(status: dict[str, Any]) -> str:
    """A human-readable report of a GET /status document (tolerates missing fields)."""
    lines = [
        f"fractal-hostd {status.get('version', '?')} ({status.get('environment', '?')})"
        + (f" at {status['api_url']}" if status.get("api_url") else ""),
    ]
    metadata = status.get("metadata") or {}
    if metadata:
        lines.append(
            _row(
                "instance",
                f"{metadata.get('instance_id')} ({metadata.get('instance_type')}, "
                f"{metadata.get('region')})",
            )
        )
    docker = status.get("docker") or {}
    lines.append(
        _row(
            "docker",
            f"{'connected' if docker.get('connected') else 'NOT connected'}, "
            f"{docker.get('events_processed', 0)} events, "
            f"{docker.get('reconnects', 0)} reconnects",
        )
    )
    lines.append(_row("draining", _draining(status.get("draining"))))
    lines.append(_row("last heartbeat", _heartbeat(status.get("last_heartbeat"))))
    lines.append(_row("free TTYs", str(status.get("free_ttys", "?"))))
    containers = status.get("containers") or []
    lines.append(_row("containers", str(len(containers))))
    if containers:
        lines.append("")
        lines.extend(_container_table(containers))
    return "\n".join(lines)


def _row(name: str, value: str) -> str:
    return f"{name + ':':<16}{value}"


def _draining(notice: dict[str, Any] | None) -> str:
    if not notice:
        return "no"
    action = f" {notice['action']}" if notice.get("action") else ""
    return f"YES: {notice.get('kind')}{action} at {notice.get('time')}"


def _heartbeat(heartbeat: dict[str, Any] | None) -> str:
    if not heartbeat:
        return "none yet"
    result = "ok" if heartbeat.get("ok") else "FAILED"
    dying = " (dying)" if heartbeat.get("dying") else ""
    return f"#{heartbeat.get('number')} at {heartbeat.get('sent_at')}, {result}{dying}"


def _container_table(containers: list[dict[str, Any]]) -> list[str]:
    header = ("CONTAINER", "HOST PORT", "TTY", "DPI", "READY", "CLOUD STORAGE")
    rows = [
        (
            str(c.get("id", ""))[:12],
            str(c.get("host_port", "")),
            _or_dash(c.get("tty")),
            _or_dash(c.get("dpi")),
            "yes" if c.get("ready") else "no",
            ", ".join(c.get("cloud_storage") or []) or "-",
        )
        for c in containers
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


def _fail(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr)
