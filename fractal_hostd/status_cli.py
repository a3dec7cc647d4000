"""`fractal-hostd status` and `fractal-hostd drain`: the operator's side of the running API.

`status` prints GET /status as a report; `drain` calls POST /drain (the host then drains as
on a spot notice). The API's certificate is self-signed and regenerated at every start, so
by default the connection is encrypted but the certificate not verified (`insecure=True`):
the commands run on the host itself, against loopback. Exit 0 with a readable answer, or 1
with one line that says what to do: a stopped service is told apart from a missing secret
(the shutdown removes the private directory with the secret, so "no secret" was what a
stopped service used to look like).
"""

from __future__ import annotations

import sys
from typing import Any

import httpx

TIMEOUT_SECONDS = 5.0
HOW_TO_START = "start it with `systemctl start fractal-hostd` (or `make run` in a checkout)"
_NO_CREDENTIAL = (
    "no API secret found (set FRACTAL_WEBSERVER_AUTH_SECRET or _FILE, "
    "or run as a user who can read FRACTAL_PRIVATE_DIR/auth_secret)"
)


class CommandFailed(Exception):
    """One line for stderr; the command exits 1."""


def status_main(*, url: str, secret: str, insecure: bool = True) -> int:
    try:
        document = _call(url, secret, "GET", "/status", insecure=insecure)
    except CommandFailed as exc:
        _fail("status", str(exc))
        return 1
    print(format_status(document, ready=_readiness(url, insecure=insecure)))
    return 0


def _readiness(url: str, *, insecure: bool) -> str:
    """GET /ready as one line: "yes", or "NO: <failing checks>"."""
    try:
        with httpx.Client(verify=not insecure, timeout=TIMEOUT_SECONDS) as client:
            answer = client.get(f"{url.rstrip('/')}/ready")
        body = answer.json()
    except (httpx.HTTPError, ValueError):
        return "unknown (GET /ready failed)"
    if answer.status_code == 200:
        return "yes"
    failing = body.get("failing") if isinstance(body, dict) else None
    return (
        f"NO: {', '.join(failing)}" if isinstance(failing, list) else f"NO ({answer.status_code})"
    )


def drain_main(*, url: str, secret: str, reason: str | None, insecure: bool = True) -> int:
    body = {} if reason is None else {"reason": reason}
    try:
        document = _call(url, secret, "POST", "/drain", json=body, insecure=insecure)
    except CommandFailed as exc:
        _fail("drain", str(exc))
        return 1
    result = document.get("result") or {}
    already = " (it already was)" if result.get("already_draining") else ""
    print(f"host is draining{already}: {_draining(result.get('draining'))}")
    return 0


def _call(
    url: str,
    secret: str,
    method: str,
    path: str,
    *,
    insecure: bool,
    json: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON object the API answers with 200, or CommandFailed saying what to do."""
    base = url.rstrip("/")
    with httpx.Client(verify=not insecure, timeout=TIMEOUT_SECONDS) as client:
        if not secret:
            # Without a secret, find out whether anything runs at all (/health needs none).
            _reachable(client, base)
            raise CommandFailed(_NO_CREDENTIAL)
        try:
            response = client.request(
                method, f"{base}{path}", json=json, headers={"Authorization": f"Bearer {secret}"}
            )
        except httpx.ConnectError:
            raise CommandFailed(_not_running(base)) from None
        except httpx.HTTPError as exc:
            raise CommandFailed(
                f"cannot reach the API at {base}: {exc or type(exc).__name__}"
            ) from None
    if response.status_code == 401:
        raise CommandFailed(f"the API at {base} refused the secret (401 unauthorized)")
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code != 200 or not isinstance(document, dict):
        error = document.get("error") if isinstance(document, dict) else None
        detail = f": {error}" if isinstance(error, str) else ""
        raise CommandFailed(
            f"unexpected answer from {base}{path}: HTTP {response.status_code}{detail}"
        )
    return document


def _reachable(client: httpx.Client, base: str) -> None:
    try:
        client.get(f"{base}/health")
    except httpx.ConnectError:
        raise CommandFailed(_not_running(base)) from None
    except httpx.HTTPError:
        return  # something answers, just not well: the secret is still the first problem


def _not_running(base: str) -> str:
    return f"fractal-hostd is not running (nothing answers at {base}); {HOW_TO_START}"


def format_status(status: dict[str, Any], *, ready: str | None = None) -> str:
    """A human-readable report of a GET /status document (tolerates missing fields), with
    the answer of GET /ready when given."""
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
    if ready is not None:
        lines.append(_row("ready", ready))
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
    errors = status.get("recent_errors") or []
    if errors:
        last = errors[-1]
        lines.append(
            _row("recent errors", f"{len(errors)}, last at {last.get('at')}: {last.get('message')}")
        )
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
    if notice.get("kind") == "operator":
        reason = f" ({notice['reason']})" if notice.get("reason") else ""
        return f"YES: operator{reason} since {notice.get('seen_at')}"
    action = f" {notice['action']}" if notice.get("action") else ""
    return (
        f"YES: {notice.get('kind')}{action} at {notice.get('time')}, seen {notice.get('seen_at')}"
    )


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


def _fail(command: str, message: str) -> None:
    print(f"fractal-hostd {command}: {message}", file=sys.stderr)
