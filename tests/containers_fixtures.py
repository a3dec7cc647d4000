"""Helpers shared by the containers tests: ids, infos and a look at a mapping directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fractal_hostd.containers.info import ContainerInfo


def cid(n: int) -> str:
    """A full 64-hex container id, distinct for every n."""
    return f"{n:064x}"


def running(n: int, host_port: int) -> ContainerInfo:
    return ContainerInfo(id=cid(n), host_port=host_port, running=True)


def dir_files(path: Path) -> dict[str, str]:
    """File name -> content of a mapping directory, checking contract §3's modes on the way.

    Plain os calls: the state machine runs this for every directory after every step."""
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755, path
    contents = {}
    for name in sorted(os.listdir(path)):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o644, (path, name)
            text = os.read(fd, 65536).decode()
        finally:
            os.close(fd)
        assert not text.endswith("\n"), (path, name)
        contents[name] = text
    return contents
