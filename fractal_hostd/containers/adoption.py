"""Start-up adoption (contract §8): decide, from the mapping directories on disk and the
containers Docker says are running, what to keep, repair, create and remove.

Pure planning plus reads (blocking: the lifecycle runs it in a worker thread); the lifecycle
carries the plan out. Everything found on disk is untrusted input (contract §3). Rules:
- an entry whose name is no container id is left alone (not ours to judge), logged;
- an entry named like a container id that is no directory (a file, a link) is logged and
  removed, never followed; its container, if running, starts afresh;
- a directory whose container is not running (gone, stopped, not managed) is removed;
- a running managed container's directory is adopted, file by file: what parses is kept
  (its TTY, DPI, ContainerARN, `.ready`), garbage is logged and repaired from what we know
  (host port from Docker, a new TTY), and the lifecycle rewrites whatever is missing. Nothing
  the container may already have read (DPI, ContainerARN, `.ready`) is removed, except a
  DPI or ContainerARN that is no value of ours (a link, a special file, garbage): its value
  is unknown now, so the lifecycle's write removes it and `.ready` with it (logged as an
  error), since `.ready` promises the values (MappingDir.write);
- a directory without a usable `tty` gets a TTY now if one is free;
- two directories claiming one TTY: the ready one keeps it (its container has read it), then
  the lower id; the other is given a new TTY (`.ready` rewritten after it, if it was ready);
- a host port that changed while we were down is rewritten, keeping the TTY.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fractal_hostd.containers.info import ContainerInfo, is_container_id
from fractal_hostd.containers.mapping import MappingDir, list_mapping_entries
from fractal_hostd.containers.registry import ContainerRecord

logger = logging.getLogger(__name__)


@dataclass
class AdoptionPlan:
    keep: list[ContainerRecord] = field(default_factory=list)  # TTY kept; files re-checked
    new_tty: list[ContainerRecord] = field(default_factory=list)  # duplicate or no TTY
    fresh: list[ContainerInfo] = field(default_factory=list)  # no usable directory
    remove: list[str] = field(default_factory=list)  # ids whose entry goes


def plan_adoption(mappings_dir: Path, live: dict[str, ContainerInfo]) -> AdoptionPlan:
    plan = AdoptionPlan()
    adoptable: list[ContainerRecord] = []
    on_disk: set[str] = set()
    for name, kind in list_mapping_entries(mappings_dir):
        if not is_container_id(name):
            logger.warning("ignoring %r in the mappings directory: not a container id", name)
            continue
        info = live.get(name)
        if kind != "dir":
            logger.warning(
                "removing a %s named like a container id from the mappings directory",
                kind,
                extra={"container_id": name},
            )
            plan.remove.append(name)
            continue
        on_disk.add(name)
        if info is None:
            plan.remove.append(name)
            continue
        record = _read_record(MappingDir(mappings_dir, name), info)
        if record is None:
            on_disk.discard(name)
        else:
            adoptable.append(record)
    plan.fresh.extend(info for cid, info in sorted(live.items()) if cid not in on_disk)

    held: set[int] = set()
    for record in sorted(adoptable, key=lambda r: (not r.ready, r.id)):
        if record.tty is not None and record.tty in held:
            logger.warning(
                "tty %d is claimed twice: giving this container a new one",
                record.tty,
                extra={"container_id": record.id},
            )
            record.tty = None
        if record.tty is None:
            plan.new_tty.append(record)
        else:
            held.add(record.tty)
            plan.keep.append(record)
    return plan


def _read_record(mapping: MappingDir, info: ContainerInfo) -> ContainerRecord | None:
    assert info.host_port is not None
    try:
        contents = mapping.read()
    except OSError as exc:
        logger.warning(
            "mapping directory unreadable (%s): starting afresh",
            exc.strerror,
            extra={"container_id": info.id},
        )
        return None
    if contents.problems:
        logger.warning(
            "mapping directory repaired: %s",
            "; ".join(contents.problems),
            extra={"container_id": info.id},
        )
    if contents.host_port not in (None, info.host_port):
        logger.info(
            "host port changed from %d while the service was down",
            contents.host_port,
            extra={"container_id": info.id},
        )
    return ContainerRecord(
        id=info.id,
        host_port=info.host_port,  # Docker's word is the truth; the file is rewritten
        tty=contents.tty,
        dpi=contents.dpi,
        container_arn=contents.container_arn,
        ready=contents.ready,
    )
