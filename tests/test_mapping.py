"""MappingDir: the files of contract §3, their modes, atomic writes, order and read-back."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fractal_hostd.containers import mapping
from fractal_hostd.containers.mapping import MappingContents, MappingDir, MappingFiles

CID = "ab" * 32


@pytest.fixture
def strict_umask() -> Iterator[None]:
    # Modes must not depend on the umask the service happens to run under.
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def files(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ready(port: int, tty: int | None, dpi: int, arn: str | None = None) -> MappingFiles:
    return MappingFiles(port, tty, dpi, arn, ready=True)


@pytest.mark.usefixtures("strict_umask")
def test_running_files_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "containerResourceMappings"
    m = MappingDir(root, CID)
    m.write(MappingFiles(40001, 12))
    assert m.path == root / CID
    assert mode(root) == 0o755
    assert mode(m.path) == 0o755
    assert files(m.path) == {"hostPort_for_my_32262_tcp": "40001", "tty": "12"}
    assert all(mode(p) == 0o644 for p in m.path.iterdir())


@pytest.mark.usefixtures("strict_umask")
def test_start_values_then_ready(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(MappingFiles(40001, 12))
    m.write(ready(40001, 12, 96, "arn:aws:ecs:us-east-1:1:task/x"))
    assert files(m.path) == {
        ".ready": ".ready",
        "ContainerARN": "arn:aws:ecs:us-east-1:1:task/x",
        "DPI": "96",
        "hostPort_for_my_32262_tcp": "40001",
        "tty": "12",
    }
    assert all(mode(p) == 0o644 for p in m.path.iterdir())


def test_ready_is_written_last_and_every_write_is_a_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(MappingFiles(40001, 12))
    renamed: list[str] = []
    real_rename = os.rename

    def spy(src: str, dst: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        assert src_dir_fd == dst_dir_fd  # same directory: atomic
        assert "/" not in src
        assert "/" not in dst
        renamed.append(dst)
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr("fractal_hostd.safefs.os.rename", spy)
    m.write(ready(40001, 12, 120, "arn:x"))
    assert renamed == ["DPI", "ContainerARN", ".ready"]
    # Unchanged values are not rewritten, but a change always rewrites .ready after it.
    renamed.clear()
    m.write(ready(40001, 12, 120, "arn:x"))
    assert renamed == []
    m.write(ready(40001, 12, 144, "arn:x"))
    assert renamed == ["DPI", ".ready"]
    assert not [p for p in m.path.iterdir() if p.name.endswith(".tmp")]


class SyncLog:
    """What `MappingDir.write` makes durable, in order: ("fsync", what) where `what` is the
    synced directory's name or "temp" for a temporary file, and ("rename", target name)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, m: MappingDir) -> None:
        self.steps: list[tuple[str, str]] = []
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
            self.steps.append(("fsync", "temp" if target.name.endswith(".tmp") else target.name))
            real_fsync(fd)

        def rename(src: str, dst: str, **fds: int) -> None:
            self.steps.append(("rename", dst))
            real_rename(src, dst, **fds)

        monkeypatch.setattr("fractal_hostd.safefs.os.fsync", fsync)
        monkeypatch.setattr("fractal_hostd.safefs.os.rename", rename)

    def before(self, name: str) -> list[tuple[str, str]]:
        return self.steps[: self.steps.index(("rename", name))]


def test_tty_is_in_place_after_two_file_fsyncs_and_all_is_durable_before_write_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container waits for its `tty`: no directory fsync stands between the start and it
    # (each file is still fsynced before its rename); the directory and its entry in the
    # mappings directory are durable before the write returns.
    (tmp_path / "containerResourceMappings").mkdir()
    m = MappingDir(tmp_path / "containerResourceMappings", CID)
    log = SyncLog(monkeypatch, m)
    m.write(MappingFiles(40001, 12))
    assert log.before("tty") == [
        ("fsync", "temp"),
        ("rename", "hostPort_for_my_32262_tcp"),
        ("fsync", "temp"),
    ]
    assert log.steps[3:] == [
        ("rename", "tty"),
        ("fsync", CID),
        ("fsync", "containerResourceMappings"),
    ]


def test_one_directory_fsync_makes_dpi_and_arn_durable_before_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(MappingFiles(40001, 12))
    log = SyncLog(monkeypatch, m)
    m.write(ready(40001, 12, 120, "arn:x"))
    assert log.steps == [
        ("fsync", "temp"),
        ("rename", "DPI"),
        ("fsync", "temp"),
        ("rename", "ContainerARN"),
        ("fsync", CID),  # both durable before `.ready` vouches for them
        ("fsync", "temp"),
        ("rename", ".ready"),
        ("fsync", CID),
    ]


def test_a_write_that_failed_after_making_the_directory_makes_it_durable_when_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = MappingDir(tmp_path / "containerResourceMappings", CID)
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("fractal_hostd.safefs.os.write", full)
    with pytest.raises(OSError, match="No space"):
        m.write(MappingFiles(40001, 12))
    assert m.path.is_dir()
    monkeypatch.setattr("fractal_hostd.safefs.os.write", real_write)
    log = SyncLog(monkeypatch, m)
    m.write(MappingFiles(40001, 12))
    assert log.steps[-2:] == [("fsync", CID), ("fsync", "containerResourceMappings")]
    assert files(m.path) == {"hostPort_for_my_32262_tcp": "40001", "tty": "12"}


def test_rewrite_keeps_last_value_and_keeps_arn_when_not_given(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(ready(40001, 12, 96, "arn:1"))
    m.write(ready(40001, 12, 144, None))
    assert m.read() == MappingContents(40001, 12, 144, "arn:1", True)


def test_no_tty_leaves_tty_file_and_ready_out(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(MappingFiles(40001, None))
    assert files(m.path) == {"hostPort_for_my_32262_tcp": "40001"}
    m.write(ready(40001, 20, 96))
    m.write(ready(40001, None, 96))
    assert files(m.path) == {"hostPort_for_my_32262_tcp": "40001", "DPI": "96"}


def test_a_stale_ready_goes_before_a_missing_tty_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(ready(40001, 12, 96))
    (m.path / "tty").unlink()
    seen: list[tuple[str, bool]] = []
    real_rename = os.rename

    def spy(src: str, dst: str, **fds: int) -> None:
        seen.append((dst, (m.path / ".ready").exists()))
        real_rename(src, dst, **fds)

    monkeypatch.setattr("fractal_hostd.safefs.os.rename", spy)
    m.write(ready(40001, 12, 96))
    assert seen == [("tty", False), (".ready", False)]
    assert files(m.path)["tty"] == "12"


def test_read_back(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(MappingFiles(40001, 63))
    assert m.read() == MappingContents(40001, 63, None, None, False)


@pytest.mark.parametrize(
    ("name", "content", "field"),
    [
        ("hostPort_for_my_32262_tcp", "40001\n", "host_port"),
        ("hostPort_for_my_32262_tcp", "0", "host_port"),
        ("hostPort_for_my_32262_tcp", "99999", "host_port"),
        ("tty", "", "tty"),
        ("tty", "9", "tty"),
        ("tty", "64", "tty"),
        ("tty", "12\n", "tty"),
        ("tty", "+12", "tty"),
        ("tty", "\uff11\uff12", "tty"),  # fullwidth digits: isdigit() but not ours
        ("tty", "1" * 5000, "tty"),
        ("DPI", "0", "dpi"),
        ("DPI", "abc", "dpi"),
        ("DPI", "96 ", "dpi"),
        ("ContainerARN", "", "container_arn"),
        ("ContainerARN", "arn\nx", "container_arn"),
    ],
)
def test_garbage_reads_as_none_and_spares_the_other_files(
    tmp_path: Path, name: str, content: str, field: str
) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(ready(40001, 12, 96, "arn:1"))
    (m.path / name).write_text(content)
    contents = m.read()
    assert getattr(contents, field) is None
    assert contents.problems
    assert contents.problems[0].startswith(name)
    good = {"host_port": 40001, "tty": 12, "dpi": 96, "container_arn": "arn:1"}
    assert all(getattr(contents, k) == v for k, v in good.items() if k != field)
    assert contents.ready


def test_ready_with_garbage_content_still_counts_as_ready(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(ready(40001, 12, 96))
    (m.path / ".ready").write_text("yes")
    contents = m.read()
    assert contents.ready
    assert contents.problems == (".ready holds garbage",)
    m.write(ready(40001, 12, 96))
    assert files(m.path)[".ready"] == ".ready"


def test_binary_garbage_is_not_text(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(MappingFiles(40001, 12))
    (m.path / "tty").write_bytes(b"\xff\xfe")
    assert m.read().problems == ("tty is not text",)


def test_missing_files_read_as_none(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(ready(40001, 12, 96))
    (m.path / "hostPort_for_my_32262_tcp").unlink()
    (m.path / "tty").unlink()
    assert m.read() == MappingContents(None, None, 96, None, True)


def test_a_directory_in_place_of_a_file_is_garbage_and_gets_replaced(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(MappingFiles(40001, 12))
    (m.path / "DPI").mkdir()
    (m.path / "DPI" / "inner").write_text("x")
    contents = m.read()
    assert contents.dpi is None
    assert contents.problems[0].startswith("DPI is unexpected")
    m.write(ready(40001, 12, 96))
    assert files(m.path)["DPI"] == "96"


@pytest.mark.parametrize(
    "bad_id", ["..", "../etc", "", CID[:-1], CID + "/..", CID.upper(), "/" + CID[1:]]
)
def test_ids_that_are_not_64_hex_are_refused(tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(ValueError, match="64-hex"):
        MappingDir(tmp_path, bad_id)


def test_remove_is_idempotent(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write(MappingFiles(40001, 12))
    m.remove()
    assert not m.path.exists()
    m.remove()
    MappingDir(tmp_path / "missing", CID).remove()


def test_list_mapping_entries(tmp_path: Path) -> None:
    assert mapping.list_mapping_entries(tmp_path / "missing") == []
    MappingDir(tmp_path, CID).write(MappingFiles(1, 10))
    (tmp_path / "junk").mkdir()
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to("/")
    assert mapping.list_mapping_entries(tmp_path) == [
        (CID, "dir"),
        ("file", "file"),
        ("junk", "dir"),
        ("link", "link"),
    ]


@pytest.mark.parametrize("dpi", [1, 96, 1000])
def test_dpi_the_api_accepts_is_a_valid_dpi_file(dpi: int) -> None:
    assert mapping.is_valid_dpi(dpi)


@pytest.mark.parametrize("dpi", [0, 1001, 10_000, True, "96"])
def test_dpi_the_api_refuses_is_garbage_on_disk(dpi: object) -> None:
    # One range for the API and for adopted DPI files: a file the API could never have
    # written is repaired, not adopted.
    assert not mapping.is_valid_dpi(dpi)


def test_tampered_tells_what_write_would_change(tmp_path: Path) -> None:
    mapping = MappingDir(tmp_path / "containerResourceMappings", "a" * 64)
    ready = MappingFiles(host_port=40000, tty=10, dpi=96, ready=True)
    assert mapping.tampered(ready)  # no directory yet
    mapping.write(ready)
    assert not mapping.tampered(ready)
    (mapping.path / "DPI").unlink()
    (mapping.path / "DPI").symlink_to(tmp_path / "outside")
    assert mapping.tampered(ready)
    mapping.write(ready)
    assert not mapping.tampered(ready)
    # Not ready: a `.ready` a container wrote itself is something write removes.
    not_ready = MappingFiles(host_port=40000, tty=10, dpi=96, ready=False)
    assert mapping.tampered(not_ready)
    mapping.write(not_ready)
    assert not (mapping.path / ".ready").exists()
    assert not mapping.tampered(not_ready)
