"""What `GET /health` adds to its liveness answer and what `GET /ready` decides on.

Liveness and readiness are different questions. `/health` answers 200 while the supervisor
runs (contract §5: systemd and a load balancer restart or route on it), whatever the checks
say: restarting the service does not reconnect a broken Docker daemon. `/ready` answers 200
only when this host can take new containers now, and 503 naming what fails otherwise — the
question the ECS agent's users asked after it reported healthy while disconnected for an
hour (aws/amazon-ecs-agent#2587), and the one kubelet's PLEG check answers.

Readiness checks and thresholds (docs/api.md):
* `startup`: start-up (contract §6) has completed;
* `docker`: the Docker event stream is subscribed;
* `reconcile`: the last successful reconcile is at most `RECONCILE_STALE_AFTER` old. The
  event stream reconciles after every (re)connect and every 300 s ± 30 s, so a healthy
  stream is never older than 330 s: missing two periodic reconciles in a row means the
  processor is stuck or every reconcile fails;
* `draining`: the host is not draining (spot/rebalance notice or `POST /drain`).
Event lag and pending file writes are shown, not judged: a burst of events or a full disk is
worth a look, but refusing containers for it would not help. No threshold is configurable:
the reconcile period is fixed in code, and an operator who wants a stricter view has the
raw numbers in the body and in /metrics.

Pure functions over HostState: the caller passes the trio clock's `now`.
"""

from __future__ import annotations

from typing import Any

from fractal_hostd.hoststate import HostState

RECONCILE_STALE_AFTER = 660.0  # two periodic reconcile intervals of at most 330 s


def health_checks(state: HostState, now: float) -> dict[str, Any]:
    """The facts /health and /ready show (seconds rounded to milliseconds)."""
    docker = state.docker
    reconcile_age = None if docker.last_reconcile_at is None else now - docker.last_reconcile_at
    lag = docker.last_event_lag_seconds
    return {
        "started": state.started_at is not None,
        "docker_connected": docker.connected,
        "last_reconcile_age_seconds": _rounded(reconcile_age),
        "event_lag_seconds": _rounded(lag),
        "pending_file_writes": state.pending_file_writes,
        "draining": state.draining is not None,
    }


def failing_checks(state: HostState, now: float) -> list[str]:
    """The names of the readiness checks that fail, in a fixed order; empty when ready."""
    failing: list[str] = []
    if state.started_at is None:
        failing.append("startup")
    if not state.docker.connected:
        failing.append("docker")
    last = state.docker.last_reconcile_at
    if last is None or now - last > RECONCILE_STALE_AFTER:
        failing.append("reconcile")
    if state.draining is not None:
        failing.append("draining")
    return failing


_EXPLANATIONS = {
    "startup": "start-up has not completed",
    "docker": "the Docker event stream is not connected",
    "reconcile": f"no successful reconcile within {RECONCILE_STALE_AFTER:g} s",
    "draining": "the host is draining",
}


def explain(failing: list[str]) -> str:
    return "not ready: " + "; ".join(_EXPLANATIONS[name] for name in failing)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)
