"""MappingDir: the files of contract §3, their modes, atomic writes and read-back."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fractal_hostd.containers import mapping
from fractal_hostd.containers.mapping import MappingContents, MappingDir, MappingInvalid

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


@pytest.mark.usefixtures("strict_umask")
def test_running_files_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "containerResourceMappings"
    m = MappingDir(root, CID)
    m.write_running(40001, 12)
    assert m.path == root / CID
    assert mode(root) == 0o755
    assert mode(m.path) == 0o755
    assert files(m.path) == {"hostPort_for_my_32262_tcp": "40001", "tty": "12"}
    assert all(mode(p) == 0o644 for p in m.path.iterdir())


@pytest.mark.usefixtures("strict_umask")
def test_start_values_then_ready(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 12)
    m.write_start_values(96, "arn:aws:ecs:us-east-1:1:task/x")
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
    m.write_running(40001, 12)
    renamed: list[str] = []
    real_replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        assert Path(src).parent == Path(dst).parent == m.path  # same directory: atomic
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr("fractal_hostd.containers.mapping.os.replace", spy)
    m.write_start_values(120, "arn:x")
    assert renamed == ["DPI", "ContainerARN", ".ready"]
    assert not [p for p in m.path.iterdir() if p.name.endswith(".tmp")]


def test_rewrite_keeps_last_value_and_keeps_arn_when_not_given(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 12)
    m.write_start_values(96, "arn:1")
    m.write_start_values(144, None)
    assert m.read() == MappingContents(40001, 12, 144, "arn:1", True)


def test_no_tty_leaves_tty_file_out_and_removes_a_stale_one(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, None)
    assert files(m.path) == {"hostPort_for_my_32262_tcp": "40001"}
    m.write_running(40001, 20)
    m.write_running(40001, None)
    assert "tty" not in files(m.path)


def test_read_back(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 63)
    assert m.read() == MappingContents(40001, 63, None, None, False)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("hostPort_for_my_32262_tcp", "40001\n"),
        ("hostPort_for_my_32262_tcp", "0"),
        ("hostPort_for_my_32262_tcp", "99999"),
        ("tty", ""),
        ("tty", "9"),
        ("tty", "64"),
        ("tty", "12\n"),
        ("tty", "+12"),
        ("tty", "\uff11\uff12"),  # fullwidth digits: isdigit() but not ours
        ("tty", "1" * 5000),
        ("DPI", "0"),
        ("DPI", "abc"),
        ("DPI", "96 "),
        ("ContainerARN", ""),
        ("ContainerARN", "arn\nx"),
        (".ready", "yes"),
    ],
)
def test_garbage_is_not_adoptable(tmp_path: Path, name: str, content: str) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 12)
    m.write_start_values(96, None)
    (m.path / name).write_text(content)
    with pytest.raises(MappingInvalid):
        m.read()


def test_binary_garbage_is_not_adoptable(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 12)
    (m.path / "tty").write_bytes(b"\xff\xfe")
    with pytest.raises(MappingInvalid, match="not text"):
        m.read()


def test_missing_host_port_is_not_adoptable(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 12)
    (m.path / "hostPort_for_my_32262_tcp").unlink()
    with pytest.raises(MappingInvalid, match="missing"):
        m.read()


def test_missing_tty_reads_as_unassigned(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, None)
    m.write_start_values(96, None)
    assert m.read() == MappingContents(40001, None, 96, None, True)


def test_ready_without_dpi_is_not_adoptable(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 12)
    (m.path / ".ready").write_text(".ready")
    with pytest.raises(MappingInvalid):
        m.read()


def test_a_directory_in_place_of_a_file_is_not_adoptable(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 12)
    (m.path / "DPI").mkdir()
    with pytest.raises(MappingInvalid, match="unreadable"):
        m.read()


@pytest.mark.parametrize(
    "bad_id", ["..", "../etc", "", CID[:-1], CID + "/..", CID.upper(), "/" + CID[1:]]
)
def test_ids_that_are_not_64_hex_are_refused(tmp_path: Path, bad_id: str) -> None:
    with pytest.raises(ValueError, match="64-hex"):
        MappingDir(tmp_path, bad_id)


def test_remove_is_idempotent(tmp_path: Path) -> None:
    m = MappingDir(tmp_path, CID)
    m.write_running(40001, 12)
    m.remove()
    assert not m.exists()
    m.remove()


def test_list_mapping_entries(tmp_path: Path) -> None:
    assert mapping.list_mapping_entries(tmp_path / "missing") == []
    MappingDir(tmp_path, CID).write_running(1, 10)
    (tmp_path / "junk").mkdir()
    assert mapping.list_mapping_entries(tmp_path) == [CID, "junk"]
