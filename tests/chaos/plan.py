"""What the driver can do, and how often: operations and faults with their weights.

Every kind can be switched off (`--disable KIND`, `--only KIND,...`): the CI run enables only
the kinds that pass on today's service (DEFAULT_DISABLED names those that find a known defect;
docs/chaos.md lists the seed and invariant each one breaks).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

# Operations on containers and the API (weights).
OPERATIONS: dict[str, float] = {
    "run_managed": 10,
    "run_unmanaged": 3,
    "reuse_port": 2,  # a new managed container on the host port a dead one had
    "start": 3,
    "stop": 4,
    "kill": 4,
    "rm": 4,
    "pause": 3,
    "unpause": 3,
    "restart": 3,
    "api_dpi": 4,
    "api_start_values": 3,
    "api_status": 2,
    "api_unknown_port": 1,
    "api_mount_ok": 1.5,
    "api_mount_hang": 0.3,
    "api_mount_die": 0.5,
}

# Faults (weights among faults; how often a step brings a fault is `fault_rate`).
FAULTS: dict[str, float] = {
    "stream_cut": 3,
    "stall": 3,  # events held back 150-600 ms, then delivered late (fake)
    "duplicate_events": 2,  # fake
    "reorder_events": 1,  # held back, then delivered shuffled (fake)
    "lost_events": 1,  # held back, then dropped, like dockerd skipping a slow reader (fake)
    "inspect_error": 1,  # Docker answers 500 for one container (fake)
    "engine_down": 1,  # the fake engine stops listening for a while (fake)
    "service_kill": 2,
    "service_term": 2,
    "service_freeze": 1,  # SIGSTOP for 0.2-1 s: a reader stalled past 100 ms
    "disk_full": 1,
    "plant_link_mapping": 0.5,  # a link named like a container id in containerResourceMappings
    "plant_link_value": 0.5,  # a live container's tty/DPI/ContainerARN/.ready made a link
    "plant_link_cloud": 0.5,  # cloudStorage/<live host port> made a link, then a mount
    "plant_stray_file": 0.5,  # a file where a container's directory would be
    "plant_garbage_tty": 0.5,  # garbage in a live container's tty file
    "plant_dead_dir": 0.5,  # a valid-looking directory of a container that is gone
    "webserver_fail": 1,
    "webserver_blackhole": 1,
    "spot_notice": 0.3,
    "second_instance": 0.5,
    "dockerd_kill": 1,  # real engine only
    "dockerd_kill_always": 1,  # real engine only, with --restart=always containers
}

FAKE_ONLY = {
    "stream_cut",  # the real engine's stream is only cut by dockerd_kill (no proxy in between)
    "stall",
    "duplicate_events",
    "reorder_events",
    "lost_events",
    "inspect_error",
    "engine_down",
}
REAL_ONLY = {"dockerd_kill", "dockerd_kill_always"}

# Kinds that find a known defect of today's main (see docs/chaos.md): off unless asked for.
DEFAULT_DISABLED: set[str] = {
    "lost_events",  # events dropped by dockerd: only the 300 s reconcile repairs them
}


def enabled_kinds(
    engine: str,
    *,
    only: Iterable[str] = (),
    disable: Iterable[str] = (),
    enable: Iterable[str] = (),
) -> set[str]:
    every = set(OPERATIONS) | set(FAULTS)
    unknown = (set(only) | set(disable) | set(enable)) - every
    if unknown:
        raise ValueError(
            f"unknown operation/fault kinds: {sorted(unknown)}; known: {sorted(every)}"
        )
    kinds = set(only) if only else (every - DEFAULT_DISABLED) | set(enable)
    kinds -= set(disable)
    kinds -= REAL_ONLY if engine == "fake" else FAKE_ONLY
    return kinds


def draw(rng: random.Random, weights: dict[str, float], kinds: set[str]) -> str | None:
    names = [name for name in weights if name in kinds]  # dict order: deterministic
    if not names:
        return None
    return rng.choices(names, [weights[name] for name in names])[0]
