"""FRACTAL_PRIVATE_DIR at shutdown: only the service's own entries go (contract §7a)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fractal_hostd.config import Config, ConfigError, check_private_dir
from fractal_hostd.process.private_dir import is_own, remove_own

OWN = ("key.pem", "cert.pem", "api_url", "auth_secret", "rclone")


def _fill_own(directory: Path) -> None:
    directory.mkdir(mode=0o700, exist_ok=True)
    for name in ("key.pem", "cert.pem", "api_url", "auth_secret", ".key.pem.1a2b3c.tmp"):
        (directory / name).write_text("x")
    (directory / "rclone" / "cache").mkdir(parents=True)
    (directory / "rclone" / "5000-dropbox.conf").write_text("token")


def test_own_entries_and_the_empty_directory_go(tmp_path: Path) -> None:
    private = tmp_path / "private"
    _fill_own(private)
    assert remove_own(private, OWN) == []
    assert not private.exists()


def test_foreign_entries_stay_and_so_does_the_directory(tmp_path: Path) -> None:
    """A mistyped FRACTAL_PRIVATE_DIR pointing at someone's data loses nothing of it."""
    private = tmp_path / "private"
    _fill_own(private)
    (private / "operators-notes.txt").write_text("keep me")
    (private / "dpkg").mkdir()
    (private / "dpkg" / "status").write_text("keep me too")
    assert remove_own(private, OWN) == ["dpkg", "operators-notes.txt"]
    assert sorted(p.name for p in private.iterdir()) == ["dpkg", "operators-notes.txt"]
    assert (private / "dpkg" / "status").read_text() == "keep me too"


def test_links_are_removed_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("data")
    private = tmp_path / "private"
    private.mkdir()
    (private / "rclone").symlink_to(outside)
    (private / "key.pem").symlink_to(outside / "precious")
    assert remove_own(private, OWN) == []
    assert (outside / "precious").read_text() == "data"


def test_private_dir_that_is_a_link_is_left_alone(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _fill_own(real)
    (tmp_path / "private").symlink_to(real)
    remove_own(tmp_path / "private", OWN)
    assert (real / "key.pem").exists()


def test_missing_directory_is_fine(tmp_path: Path) -> None:
    assert remove_own(tmp_path / "never-made", OWN) == []


def test_temporaries_of_own_files_only() -> None:
    assert is_own(".key.pem.tmp", OWN)
    assert is_own(".auth_secret.9f8e.tmp", OWN)
    assert not is_own(".bashrc", OWN)
    assert not is_own("key.pem.bak", OWN)


@pytest.mark.parametrize(
    "path",
    ["/", "/var/lib", "/var/lib/", "/etc", "/etc/ssl", "/usr/local", "/tmp", "/home", "/var/.."],
)
def test_system_directories_are_refused(path: str) -> None:
    with pytest.raises(ConfigError, match=r"FRACTAL_PRIVATE_DIR=.*system directory"):
        check_private_dir(Path(path), Path("/fractal"))
    with pytest.raises(ConfigError, match="FRACTAL_PRIVATE_DIR"):
        Config.from_env({"FRACTAL_PRIVATE_DIR": path})


@pytest.mark.parametrize("path", ["/fractalprivate", "/var/lib/fractal-hostd", "/tmp/x/private"])
def test_own_directories_are_allowed(path: str) -> None:
    check_private_dir(Path(path), Path("/fractal"))


@pytest.mark.parametrize(("private", "root"), [("/f", "/f"), ("/f/p", "/f"), ("/p", "/p/f")])
def test_private_dir_must_lie_outside_the_root(private: str, root: str) -> None:
    with pytest.raises(ConfigError, match="outside FRACTAL_ROOT"):
        check_private_dir(Path(private), Path(root))


def test_chmod_survives_on_a_kept_directory(tmp_path: Path) -> None:
    private = tmp_path / "private"
    _fill_own(private)
    (private / "other").write_text("x")
    remove_own(private, OWN)
    assert os.stat(private).st_mode & 0o777 == 0o700
