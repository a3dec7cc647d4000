"""Container lifecycle: which containers are managed, their TTYs and mapping directories.

Pure logic plus the small files of contract §3; the Docker layer feeds it, the API reads it.
"""

from fractal_hostd.containers.info import ContainerInfo
from fractal_hostd.containers.lifecycle import ContainerLifecycle, ContainerUnknown, GoneHook
from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry
from fractal_hostd.containers.ttypool import TtyPool

__all__ = [
    "ContainerInfo",
    "ContainerLifecycle",
    "ContainerRecord",
    "ContainerRegistry",
    "ContainerUnknown",
    "GoneHook",
    "TtyPool",
]
