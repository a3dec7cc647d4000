"""The invariant checks on hand-made snapshots: each one flags what it is there to flag."""

from __future__ import annotations

from typing import Any

from tests.chaos.engines import Live
from tests.chaos.invariants import (
    HOST_PORT_FILE,
    Checker,
    FileEntry,
    MappingEntry,
    Snapshot,
    check,
    check_heartbeats,
)
from tests.chaos.service import Run

A, B = "a" * 64, "b" * 64


def mapping(port: int, tty: int | str, **extra: str) -> MappingEntry:
    files = {"tty": FileEntry("file", str(tty)), HOST_PORT_FILE: FileEntry("file", str(port))}
    files.update({name: FileEntry("file", value) for name, value in extra.items()})
    return MappingEntry("dir", files)


def snapshot(**changes: Any) -> Snapshot:
    base: dict[str, Any] = {
        "live": {A: Live(A, 40000, False, "1"), B: Live(B, 40001, True, "1")},
        "mappings": {A: mapping(40000, 10), B: mapping(40001, 11)},
        "planted": set(),
        "mounts": [],
        "rclone_processes": [],
        "outside_changed": [],
        "heartbeats": [],
        "runs": [],
        "service_up": True,
        "api_errors": [],
        "resources": (20, 70_000),
        "mounts_settled": True,
    }
    base.update(changes)
    return Snapshot(**base)


def test_a_consistent_snapshot_passes() -> None:
    assert check(snapshot()) == []


def test_each_file_invariant_is_flagged() -> None:
    assert "share tty 10" in " ".join(
        check(snapshot(mappings={A: mapping(40000, 10), B: mapping(40001, 10)}))
    )
    assert "has no mapping directory" in " ".join(check(snapshot(mappings={A: mapping(40000, 10)})))
    wrong_port = check(snapshot(mappings={A: mapping(40000, 10), B: mapping(40009, 11)}))
    assert "host-port file" in " ".join(wrong_port)
    garbage = check(snapshot(mappings={A: mapping(40000, "x"), B: mapping(40001, 11)}))
    assert "tty file missing or invalid" in " ".join(garbage)
    dead = check(snapshot(live={A: Live(A, 40000, False, "1")}))
    assert "for no live managed container" in " ".join(dead)
    ready = {A: mapping(40000, 10, **{".ready": ".ready"}), B: mapping(40001, 11)}
    assert ".ready without a regular DPI" in " ".join(check(snapshot(mappings=ready)))


def test_planted_entries_are_exempt_but_outside_writes_are_not() -> None:
    stray = {A: mapping(40000, 10), B: mapping(40001, 11), "c" * 64: MappingEntry("link")}
    assert check(snapshot(mappings=stray, planted={"c" * 64})) == []
    assert check(snapshot(outside_changed=["/tmp/x"])) == ["written outside FRACTAL_ROOT: /tmp/x"]


def test_mount_and_process_leaks_are_flagged() -> None:
    leaked = check(snapshot(mounts=[(40005, "/r/cloudStorage/40005/Dropbox")]))
    assert "of no live container" in " ".join(leaked)
    assert check(snapshot(mounts=[(40000, "/r/cloudStorage/40000/Dropbox")])) == []
    orphan = check(snapshot(rclone_processes=[(123, None)]))
    assert "rclone process 123" in " ".join(orphan)
    # While a mount request is in flight its rclone may legitimately run without a mount.
    assert check(snapshot(rclone_processes=[(123, None)], mounts_settled=False)) == []


def beats(*numbers: int, dying_last: bool = False) -> list[dict[str, Any]]:
    out = [{"HeartbeatNumber": n, "IsDyingHeartbeat": False} for n in numbers]
    if dying_last:
        out[-1]["IsDyingHeartbeat"] = True
    return out


def test_heartbeat_invariants() -> None:
    term = Run(0, 1, 0, stop="term", exit_code=0, last_heartbeat=3)
    assert check_heartbeats(beats(0, 1, 2, dying_last=True), [term]) == []
    assert "rise by one" in " ".join(check_heartbeats(beats(0, 2, 3, dying_last=True), [term]))
    assert "expected 1" in " ".join(check_heartbeats(beats(0, 1, 2), [term]))
    killed = Run(0, 1, 0, stop="kill", exit_code=-9, last_heartbeat=3)
    assert "SIGKILL" in " ".join(check_heartbeats(beats(0, 1, 2, dying_last=True), [killed]))
    after = beats(0, 1, 2)
    after[1]["IsDyingHeartbeat"] = True
    assert "after a dying one" in " ".join(check_heartbeats(after, [term]))
    # Two runs: numbering starts again at 0 in each.
    second = Run(1, 2, 3)
    assert check_heartbeats(beats(0, 1, 2, dying_last=True) + beats(0, 1), [term, second]) == []
    # The known gap before the dying heartbeat is tolerated only when not strict.
    gap = beats(0, 1, 3, dying_last=True)
    assert check_heartbeats(gap, [term], strict=False) == []
    assert check_heartbeats(gap, [term], strict=True) != []


def test_a_tty_change_of_a_living_container_is_flagged_but_not_after_its_restart() -> None:
    checker = Checker()
    first = snapshot()
    checker.remember(first)
    moved = snapshot(mappings={A: mapping(40000, 12), B: mapping(40001, 11)})
    assert "tty changed 10 -> 12" in " ".join(checker.violations(moved))
    restarted = snapshot(
        live={A: Live(A, 40000, False, "2"), B: Live(B, 40001, True, "1")},
        mappings={A: mapping(40000, 12), B: mapping(40001, 11)},
    )
    assert checker.violations(restarted) == []


def test_5xx_and_resources_are_flagged() -> None:
    assert "5xx" in " ".join(check(snapshot(api_errors=["PUT /x -> 500"])))
    assert "fds" in " ".join(check(snapshot(resources=(10_000, 70_000))))
    assert "RSS" in " ".join(check(snapshot(resources=(20, 10**7))))
