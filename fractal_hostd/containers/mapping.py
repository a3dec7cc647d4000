"""The per-container mapping directory of contract §3, written for the container to read.

Layout: ``<mappings_dir>/<64-hex id>/`` (0755) holding ``hostPort_for_my_32262_tcp``,
``tty``, ``DPI``, ``ContainerARN`` and ``.ready`` (0644, no trailing newline).

Every file is replaced atomically: a temporary file in the same directory is written,
fsynced, renamed over the target, and the directory is fsynced, so a reader sees the old
value or the new one, never part of one. ``.ready`` is written last, after the directory
fsync that makes DPI/ContainerARN durable, so after a crash ``.ready`` never exists without
the values it vouches for.

The I/O is plain blocking calls. Measured on ext4 (2 cores): the two files written when a
container starts cost ~0.6-1.1 ms p50 including fsyncs, far below the 5 ms start→tty budget.
A thread hop (`trio.to_thread.run_sync`) would add latency and, worse, open an await in the
middle of a container's bookkeeping where a die event could interleave. See docs/containers.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fractal_hostd.containers.info import is_container_id, parse_port
from fractal_hostd.containers.ttypool import is_valid_tty

HOST_PORT_FILE = "hostPort_for_my_32262_tcp"
TTY_FILE = "tty"
DPI_FILE = "DPI"
ARN_FILE = "ContainerARN"
READY_FILE = ".ready"
READY_CONTENT = ".ready"

DIR_MODE = 0o755
FILE_MODE = 0o644
MAX_DPI = 10_000  # no display has more; bigger values are garbage, not a DPI
MAX_FILE_BYTES = 4096  # a value file bigger than this is garbage: never read it whole


class MappingInvalid(Exception):
    """A mapping directory whose files cannot be trusted (garbage, missing, inconsistent)."""


@dataclass(frozen=True)
class MappingContents:
    """What an existing mapping directory says (read back for adoption after a restart)."""

    host_port: int
    tty: int | None
    dpi: int | None
    container_arn: str | None
    ready: bool


def is_valid_dpi(dpi: object) -> bool:
    return isinstance(dpi, int) and not isinstance(dpi, bool) and 1 <= dpi <= MAX_DPI


def is_valid_arn(arn: object) -> bool:
    # Written verbatim into a file the container reads: one printable line, nothing else.
    return isinstance(arn, str) and 0 < len(arn) <= 2048 and arn.isprintable()


class MappingDir:
    """The mapping directory of one container; refuses anything but a 64-hex id."""

    def __init__(self, mappings_dir: Path, container_id: str) -> None:
        if not is_container_id(container_id):
            raise ValueError("not a full 64-hex container id")
        self.path = mappings_dir / container_id

    def write_running(self, host_port: int, tty: int | None) -> None:
        """Create the directory with the files known when the container starts running.
        Without a TTY (pool exhausted) the ``tty`` file is left out."""
        _make_parents(self.path.parent)
        created = _mkdir(self.path)
        values = [(HOST_PORT_FILE, str(host_port))]
        if tty is not None:
            values.append((TTY_FILE, str(tty)))
        else:
            # Never leave a stale number behind (a TTY taken away at adoption).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / TTY_FILE)
        _write_files(self.path, values)
        if created:
            _fsync_dir(self.path.parent)

    def write_start_values(self, dpi: int, container_arn: str | None) -> None:
        """DPI (and ContainerARN), then ``.ready`` once those are durable."""
        values = [(DPI_FILE, str(dpi))]
        if container_arn is not None:
            values.append((ARN_FILE, container_arn))
        _write_files(self.path, values)
        _write_files(self.path, [(READY_FILE, READY_CONTENT)])

    def rewrite_ready(self) -> None:
        """Write ``.ready`` again so it stays the last file written after a late change."""
        _write_files(self.path, [(READY_FILE, READY_CONTENT)])

    def exists(self) -> bool:
        return self.path.is_dir()

    def read(self) -> MappingContents:
        """Read the directory back; raises MappingInvalid when any file is not trustworthy."""
        host_port = parse_port(_read_value(self.path / HOST_PORT_FILE, required=True))
        if host_port is None:
            raise MappingInvalid(f"{HOST_PORT_FILE} is not a port")
        # No `tty` file: the container started while the TTY pool was exhausted.
        tty_text = _read_value(self.path / TTY_FILE, required=False)
        tty = None if tty_text is None else _parse_int(tty_text)
        if tty_text is not None and not is_valid_tty(tty):
            raise MappingInvalid(f"{TTY_FILE} is not a TTY number")
        dpi_text = _read_value(self.path / DPI_FILE, required=False)
        dpi = None if dpi_text is None else _parse_int(dpi_text)
        if dpi_text is not None and not is_valid_dpi(dpi):
            raise MappingInvalid(f"{DPI_FILE} is not a DPI")
        arn = _read_value(self.path / ARN_FILE, required=False)
        if arn is not None and not is_valid_arn(arn):
            raise MappingInvalid(f"{ARN_FILE} is not an ARN")
        ready_text = _read_value(self.path / READY_FILE, required=False)
        if ready_text is not None and ready_text != READY_CONTENT:
            raise MappingInvalid(f"{READY_FILE} has unexpected content")
        ready = ready_text is not None
        if ready and dpi is None:
            raise MappingInvalid(f"{READY_FILE} without {DPI_FILE}")
        return MappingContents(host_port, tty, dpi, arn, ready)

    def remove(self) -> None:
        """Remove the directory; a directory that is already gone is fine."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.path)


def list_mapping_entries(mappings_dir: Path) -> list[str]:
    """Names in the mappings directory (ids and anything else); [] when it does not exist."""
    try:
        return sorted(os.listdir(mappings_dir))
    except FileNotFoundError:
        return []


def _make_parents(path: Path) -> None:
    # Missing ancestors (FRACTAL_ROOT, containerResourceMappings) get 0755 too, whatever the
    # umask: containers must be able to traverse them. Existing ones are the operator's.
    if not path.is_dir():
        _make_parents(path.parent)
        _mkdir(path)


def _mkdir(path: Path) -> bool:
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:
        created = False
    else:
        created = True
    os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
    return created


def _write_files(directory: Path, values: Iterable[tuple[str, str]]) -> None:
    for name, value in values:
        tmp = directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # open's mode is filtered by the umask
            os.write(fd, value.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, directory / name)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_value(path: Path, *, required: bool) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise MappingInvalid(f"{path.name} is missing") from None
        return None
    except OSError as exc:
        raise MappingInvalid(f"{path.name} is unreadable: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise MappingInvalid(f"{path.name} is too large")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise MappingInvalid(f"{path.name} is not text") from None


def _parse_int(text: str | None) -> int | None:
    # Strictly what we write: ASCII digits, no sign, no whitespace, no trailing newline.
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 6:
        return None
    return int(text)
