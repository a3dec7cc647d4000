"""Start-up adoption (contract §8): decide, from the mapping directories on disk and the
containers Docker says are running, what to keep, repair, create and remove.

Pure planning plus reads; the lifecycle carries the plan out. Rules:
- a directory whose name is no container id is left alone (not ours to judge), logged;
- a directory whose container is not running (gone, stopped, not managed) is removed;
- a running managed container's directory is adopted, keeping its TTY and files, when every
  file parses; garbage anywhere makes it not adoptable: removed and started afresh;
- a directory without a `tty` file (pool exhausted at start) is adopted; it gets a TTY now if
  one is free and it is not ready yet;
- two directories claiming one TTY: the ready one keeps it (its container has read it), then
  the lower id; the other is given a new TTY (`.ready` rewritten after it, if it was ready);
- a host port that changed while we were down is rewritten, keeping the TTY.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from fractal_hostd.containers.info import ContainerInfo, is_container_id
from fractal_hostd.containers.mapping import MappingDir, MappingInvalid, list_mapping_entries
from fractal_hostd.containers.registry import ContainerRecord

logger = logging.getLogger(__name__)


@dataclass
class AdoptionPlan:
    keep: list[ContainerRecord] = field(default_factory=list)  # files and TTY are right
    rewrite: list[ContainerRecord] = field(default_factory=list)  # host port changed
    new_tty: list[ContainerRecord] = field(default_factory=list)  # duplicate or no TTY
    fresh: list[ContainerInfo] = field(default_factory=list)  # no usable directory
    remove: list[str] = field(default_factory=list)  # ids whose directory goes


def plan_adoption(mappings_dir: Path, live: dict[str, ContainerInfo]) -> AdoptionPlan:
    plan = AdoptionPlan()
    adoptable: list[ContainerRecord] = []
    on_disk: set[str] = set()
    for name in list_mapping_entries(mappings_dir):
        if not is_container_id(name):
            logger.warning("ignoring %r in the mappings directory: not a container id", name)
            continue
        on_disk.add(name)
        info = live.get(name)
        if info is None:
            plan.remove.append(name)
            continue
        record = _read_record(MappingDir(mappings_dir, name), info)
        if record is None:
            plan.remove.append(name)
            plan.fresh.append(info)
        else:
            adoptable.append(record)
    plan.fresh.extend(info for cid, info in sorted(live.items()) if cid not in on_disk)

    held: set[int] = set()
    for record in sorted(adoptable, key=lambda r: (not r.ready, r.id)):
        port_on_disk = record.host_port
        record.host_port = live[record.id].host_port or port_on_disk
        if record.tty is not None and record.tty in held:
            logger.warning(
                "tty %d is claimed twice: giving this container a new one",
                record.tty,
                extra={"container_id": record.id},
            )
            record.tty = None
            plan.new_tty.append(record)
        elif record.tty is None and not record.ready:
            # Started while the pool was exhausted and still waiting for `.ready`: a TTY
            # now still counts. A ready one has gone on without and keeps going so.
            plan.new_tty.append(record)
        else:
            if record.tty is not None:
                held.add(record.tty)
            (plan.keep if record.host_port == port_on_disk else plan.rewrite).append(record)
    return plan


def _read_record(mapping: MappingDir, info: ContainerInfo) -> ContainerRecord | None:
    try:
        contents = mapping.read()
    except MappingInvalid as exc:
        logger.warning(
            "mapping directory not adoptable (%s): starting afresh",
            exc,
            extra={"container_id": info.id},
        )
        return None
    return ContainerRecord(
        id=info.id,
        host_port=contents.host_port,
        tty=contents.tty,
        dpi=contents.dpi,
        container_arn=contents.container_arn,
        ready=contents.ready,
    )
