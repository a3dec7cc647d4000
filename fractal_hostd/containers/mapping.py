"""The per-container mapping directory of contract §3, written for the container to read.

Layout: ``<mappings_dir>/<64-hex id>/`` (0755) holding ``hostPort_for_my_32262_tcp``,
``tty``, ``DPI``, ``ContainerARN`` and ``.ready`` (0644, no trailing newline).

The directory is untrusted: the container it is mounted into can write there. All I/O goes
through `fractal_hostd.safefs` (directory fds, O_NOFOLLOW, random O_EXCL temporary names), so a
link planted at any name is replaced or refused, never followed. `mappings_dir.parent`
(FRACTAL_ROOT) is the trusted root; `containerResourceMappings` and everything below it are not.

`MappingDir.write` brings the directory to a wanted state (`MappingFiles`) and is idempotent,
which is what makes a failed write retryable: it compares each file with the wanted value,
rewrites only what differs, and keeps contract §3's order:
- ``.ready`` is removed first when ``hostPort_for_my_32262_tcp`` or ``tty`` must be rewritten,
  so it is never present while one of them is missing;
- DPI/ContainerARN are durable (directory fsync) before ``.ready`` is written;
- ``.ready`` is written last, again, whenever anything else was written.

Every file is fsynced before its rename; the directory is fsynced once after all the values
of a write (and its entry in the mappings directory when ``hostPort_for_my_32262_tcp`` or
``tty`` was written), not after each file: a starting container's ``tty`` is in place after
two fsyncs instead of four, and everything is as durable as before when `write` returns.

`read` is lenient: each file is judged alone, so garbage in one never costs the container the
others (adoption keeps DPI, ContainerARN and ``.ready``; it repairs what is missing).

An untrusted ``DPI`` or ``ContainerARN`` (a link, a non-regular file, garbage) is replaced
when the value is known; when it is not, `write` removes it, and ``.ready`` before it:
``.ready`` vouches for the values, and this one is not the container's (it returns the names
so the lifecycle can say so). `tampered` tells, by reading only, whether a directory no
longer holds what `write` would make of it (the reconcile's check).

The I/O blocks (fsyncs); the lifecycle runs it in a worker thread. See docs/containers.md.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fractal_hostd import safefs
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
# The one DPI range: the API accepts it, and a DPI file outside it is garbage, not a DPI.
MIN_DPI, MAX_DPI = 1, 1000
MAX_FILE_BYTES = 4096  # a value file bigger than this is garbage: never read it whole


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MappingFiles:
    """What a mapping directory should hold: the lifecycle's record, frozen for one write."""

    host_port: int
    tty: int | None  # None: no `tty` file (and then no `.ready` either)
    dpi: int | None = None  # None: DPI left as it is on disk
    container_arn: str | None = None  # None: ContainerARN left as it is on disk
    ready: bool = False


@dataclass(frozen=True)
class MappingContents:
    """What an existing mapping directory says, file by file (read back for adoption).
    A value is None when its file is missing or not trustworthy; `problems` says which."""

    host_port: int | None
    tty: int | None
    dpi: int | None
    container_arn: str | None
    ready: bool
    problems: tuple[str, ...] = ()


def is_valid_dpi(dpi: object) -> bool:
    return isinstance(dpi, int) and not isinstance(dpi, bool) and MIN_DPI <= dpi <= MAX_DPI


def is_valid_arn(arn: object) -> bool:
    # Written verbatim into a file the container reads: one printable line, nothing else.
    return isinstance(arn, str) and 0 < len(arn) <= 2048 and arn.isprintable()


class MappingDir:
    """The mapping directory of one container; refuses anything but a 64-hex id."""

    def __init__(self, mappings_dir: Path, container_id: str) -> None:
        if not is_container_id(container_id):
            raise ValueError("not a full 64-hex container id")
        self.path = mappings_dir / container_id
        self._root = mappings_dir.parent
        self._parts = (mappings_dir.name, container_id)

    def write(self, files: MappingFiles) -> tuple[str, ...]:
        """Make the directory hold `files` (see the module doc for the order). Raises OSError
        when a file cannot be written; calling it again later finishes the job. Returns the
        untrusted value files it removed (unknown values: `.ready` was removed too)."""
        with (
            safefs.opened(_open_dir(self._root, self._parts[:1])) as parent_fd,
            safefs.opened(
                safefs.open_subdir(
                    parent_fd, self._parts[1], create=True, mode=DIR_MODE, sync_parent=False
                )
            ) as dir_fd,
        ):
            os.fchmod(dir_fd, DIR_MODE)  # also repairs a mode a container changed
            plan = _plan(dir_fd, files)
            if (plan.stale or not plan.ready_wanted) and safefs.remove_file(dir_fd, READY_FILE):
                safefs.fsync_fd(dir_fd)  # `.ready` is gone before anything it vouches for goes
            changed = plan.changes
            _put(dir_fd, changed)
            if changed:
                safefs.fsync_fd(dir_fd)  # one fsync makes every rename above durable
            if plan.stale:
                # The directory's entry: made just now, or by a write that failed half-way.
                safefs.fsync_fd(parent_fd)
            if plan.ready_wanted and (changed or _current(dir_fd, READY_FILE) != READY_CONTENT):
                safefs.write_file(dir_fd, READY_FILE, READY_CONTENT.encode(), mode=FILE_MODE)
            return plan.untrusted

    def tampered(self, files: MappingFiles) -> bool:
        """Whether `write(files)` would change anything (reads only). Never raises: a
        directory or file that cannot be read counts as tampered (the write decides, and
        retries a disk error)."""
        try:
            with safefs.opened(safefs.open_path(self._root, self._parts)) as dir_fd:
                plan = _plan(dir_fd, files)
                ready = _current(dir_fd, READY_FILE)
        except OSError:
            return True
        if plan.changes:
            return True
        return ready != READY_CONTENT if plan.ready_wanted else ready is not None

    def read(self) -> MappingContents:
        """Read the directory back, each file on its own. Raises OSError (FileNotFoundError,
        safefs.UnexpectedEntry) only when the directory itself cannot be opened."""
        problems: list[str] = []
        with safefs.opened(safefs.open_path(self._root, self._parts)) as dir_fd:

            def value(name: str) -> str | None:
                text = _current(dir_fd, name)
                if isinstance(text, _Garbage):
                    problems.append(f"{name} {text.reason}")
                    return None
                return text

            port_text, tty_text, dpi_text = value(HOST_PORT_FILE), value(TTY_FILE), value(DPI_FILE)
            arn, ready_text = value(ARN_FILE), value(READY_FILE)
        host_port = None if port_text is None else parse_port(port_text)
        if port_text is not None and host_port is None:
            problems.append(f"{HOST_PORT_FILE} holds garbage")
        tty = None if tty_text is None else _parse_int(tty_text)
        if tty_text is not None and not is_valid_tty(tty):
            problems.append(f"{TTY_FILE} holds garbage")
            tty = None
        dpi = None if dpi_text is None else _parse_int(dpi_text)
        if dpi_text is not None and not is_valid_dpi(dpi):
            problems.append(f"{DPI_FILE} holds garbage")
            dpi = None
        if arn is not None and not is_valid_arn(arn):
            problems.append(f"{ARN_FILE} holds garbage")
            arn = None
        if ready_text is not None and ready_text != READY_CONTENT:
            problems.append(f"{READY_FILE} holds garbage")  # still there: the container saw it
        return MappingContents(host_port, tty, dpi, arn, ready_text is not None, tuple(problems))

    def present(self) -> bool:
        """Whether anything sits at the directory's name: one lstat, cheap enough for the
        event loop (a link is not followed; only a hint, `remove` decides safely)."""
        return os.path.lexists(self.path)

    def remove(self) -> None:
        """Remove the directory (or whatever sits at its name), never following a link; a
        directory that is already gone, or a mappings directory that is not one, is fine."""
        try:
            parent = safefs.open_path(self._root, self._parts[:1])
        except FileNotFoundError:
            return
        except safefs.UnexpectedEntry:
            return  # nothing of ours can be below a link or file; the next write replaces it
        with safefs.opened(parent):
            safefs.remove_tree(parent, self._parts[1])


def _open_dir(root: Path, parts: tuple[str, ...]) -> int:
    # FRACTAL_ROOT and containerResourceMappings are made 0755 when missing (containers must
    # traverse them); an existing FRACTAL_ROOT is the operator's and keeps its mode.
    return safefs.open_path(root, parts, create=True, mode=DIR_MODE)


@dataclass(frozen=True)
class _Garbage:
    reason: str


def _current(dir_fd: int, name: str) -> str | _Garbage | None:
    """The text of `name`; None when missing; _Garbage when it cannot be our file."""
    try:
        data = safefs.read_file(dir_fd, name, max_bytes=MAX_FILE_BYTES)
    except safefs.FileTooLarge:
        return _Garbage("is too large")
    except safefs.UnexpectedEntry as exc:
        return _Garbage(f"is unexpected ({exc.strerror})")
    except OSError as exc:
        if exc.errno in _TRANSIENT:
            raise  # a disk error is no verdict on the file: let the caller retry
        return _Garbage(f"is unreadable ({exc.strerror})")
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return _Garbage("is not text")


# Errors of the disk, not of the file: reading again later may well succeed.
_TRANSIENT = frozenset({errno.EIO, errno.ENOSPC, errno.EROFS})


@dataclass(frozen=True)
class _Plan:
    """What `write` must change in a directory to make it hold `files` (`.ready` apart)."""

    stale: list[tuple[str, str | None]]  # host-port / tty files to (re)write or remove
    values: list[tuple[str, str | None]]  # DPI / ContainerARN files to (re)write
    untrusted: tuple[str, ...]  # DPI / ContainerARN to remove: no value of ours, none known
    ready_wanted: bool

    @property
    def changes(self) -> list[tuple[str, str | None]]:
        """Every file to write (value) or remove (None), in `write`'s order."""
        return self.stale + [(name, None) for name in self.untrusted] + self.values


def _plan(dir_fd: int, files: MappingFiles) -> _Plan:
    """Reads only. An untrusted DPI/ContainerARN is a link, a non-regular file or garbage
    where the value is not known (None in `files`: a trusted one is left as it is)."""
    base = [
        (HOST_PORT_FILE, str(files.host_port)),
        (TTY_FILE, None if files.tty is None else str(files.tty)),
    ]
    stale = [(name, value) for name, value in base if _current(dir_fd, name) != value]
    values: list[tuple[str, str | None]] = []
    untrusted: list[str] = []
    for name, wanted in ((DPI_FILE, files.dpi), (ARN_FILE, files.container_arn)):
        current = _current(dir_fd, name)
        if wanted is not None:
            text = str(wanted)
            if current != text:
                values.append((name, text))
        elif isinstance(current, _Garbage) or not _is_value(name, current):
            untrusted.append(name)
    ready_wanted = files.ready and files.tty is not None and not untrusted
    return _Plan(stale, values, tuple(untrusted), ready_wanted)


def _is_value(name: str, text: str | None) -> bool:
    """Whether `text` (None: no file) could be a value we wrote at `name`."""
    if text is None:
        return True
    return is_valid_dpi(_parse_int(text)) if name == DPI_FILE else is_valid_arn(text)


def _put(dir_fd: int, values: list[tuple[str, str | None]]) -> None:
    """Write (or for None remove) each value; each file is fsynced before its rename, the
    directory is not: the caller fsyncs it once, after the last."""
    for name, value in values:
        if value is None:
            safefs.remove_file(dir_fd, name)
        else:
            safefs.write_file(dir_fd, name, value.encode(), mode=FILE_MODE, sync_dir=False)


def list_mapping_entries(mappings_dir: Path) -> list[tuple[str, str]]:
    """(name, kind) of every entry in the mappings directory (see safefs.list_entries); []
    when it does not exist or is not a directory (logged: the next write replaces it)."""
    try:
        with safefs.opened(safefs.open_path(mappings_dir.parent, [mappings_dir.name])) as fd:
            return safefs.list_entries(fd)
    except FileNotFoundError:
        return []
    except safefs.UnexpectedEntry as exc:
        logger.warning("mappings directory %s: %s", mappings_dir, exc.strerror)
        return []


def remove_entry(mappings_dir: Path, name: str) -> None:
    """Remove whatever `name` is in the mappings directory, never following a link."""
    MappingDir(mappings_dir, name).remove()


def probe_writable(mappings_dir: Path) -> None:
    """Raise the OSError that keeps the service from creating files in the mappings
    directory (made, or replaced when it is not a directory, on the way)."""
    safefs.probe_writable(mappings_dir.parent, [mappings_dir.name])


def _parse_int(text: str | None) -> int | None:
    # Strictly what we write: ASCII digits, no sign, no whitespace, no trailing newline.
    if text is None or not text.isascii() or not text.isdigit() or len(text) > 6:
        return None
    return int(text)
