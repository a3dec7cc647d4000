"""safefs: links planted at every name the service touches are replaced or refused, never
followed, and what they point to stays untouched.

Rules: everything on tmp_path; an `outside` directory plays the host's files a container
would like root to overwrite, read or delete.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from fractal_hostd import safefs
from fractal_hostd.api.secret import load_or_create_auth_secret
from fractal_hostd.api.tls import generate_certificate
from fractal_hostd.process.private_files import write_private_file


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    victim = tmp_path / "outside"
    victim.mkdir()
    (victim / "passwd").write_text("root:x:0:0")
    return victim


def untouched(outside: Path) -> bool:
    return sorted(os.listdir(outside)) == ["passwd"] and (
        (outside / "passwd").read_text() == "root:x:0:0"
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def test_write_replaces_a_link_at_the_target_name(root: Path, outside: Path) -> None:
    (root / "DPI").symlink_to(outside / "passwd")
    with safefs.opened(safefs.open_root(root)) as fd:
        safefs.write_file(fd, "DPI", b"96")
    assert not (root / "DPI").is_symlink()
    assert (root / "DPI").read_text() == "96"
    assert untouched(outside)


def test_write_never_follows_a_link_at_the_temporary_name(
    root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fractal_hostd.safefs.secrets.token_hex", lambda n: "fixed")
    (root / ".DPI.fixed.tmp").symlink_to(outside / "passwd")
    (root / ".DPI.tmp").symlink_to(outside / "passwd")  # the name older versions used
    with safefs.opened(safefs.open_root(root)) as fd, pytest.raises(FileExistsError):
        safefs.write_file(fd, "DPI", b"96")
    assert untouched(outside)
    monkeypatch.undo()
    with safefs.opened(safefs.open_root(root)) as fd:  # a fresh random name the next time
        safefs.write_file(fd, "DPI", b"96")
    assert (root / "DPI").read_text() == "96"
    assert untouched(outside)


def test_write_replaces_a_directory_at_the_target_name(root: Path) -> None:
    (root / "tty" / "deep").mkdir(parents=True)
    with safefs.opened(safefs.open_root(root)) as fd:
        safefs.write_file(fd, "tty", b"10", mode=0o600)
    assert (root / "tty").read_text() == "10"
    assert stat.S_IMODE((root / "tty").stat().st_mode) == 0o600


def test_a_failed_write_leaves_no_temporary_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fractal_hostd.safefs.os.fsync", no_space)
    with safefs.opened(safefs.open_root(root)) as fd, pytest.raises(OSError, match="space"):
        safefs.write_file(fd, "DPI", b"96")
    assert os.listdir(root) == []


def test_open_path_replaces_links_and_files_where_directories_belong(
    root: Path, outside: Path
) -> None:
    (root / "containerResourceMappings").symlink_to(outside)
    with pytest.raises(safefs.UnexpectedEntry):
        safefs.open_path(root, ["containerResourceMappings"])
    fd = safefs.open_path(root, ["containerResourceMappings", "abc"], create=True, mode=0o755)
    os.close(fd)
    assert (root / "containerResourceMappings").is_dir()
    assert not (root / "containerResourceMappings").is_symlink()
    (root / "containerResourceMappings" / "abc").rmdir()
    (root / "containerResourceMappings" / "abc").write_text("a file")
    os.close(safefs.open_path(root, ["containerResourceMappings", "abc"], create=True))
    assert (root / "containerResourceMappings" / "abc").is_dir()
    assert untouched(outside)


def test_read_refuses_links_fifos_and_big_files(root: Path, outside: Path) -> None:
    (root / "link").symlink_to(outside / "passwd")
    os.mkfifo(root / "fifo")
    (root / "big").write_bytes(b"1" * 100)
    (root / "ok").write_bytes(b"40001")
    with safefs.opened(safefs.open_root(root)) as fd:
        with pytest.raises(safefs.UnexpectedEntry):
            safefs.read_file(fd, "link", max_bytes=10)
        with pytest.raises(safefs.UnexpectedEntry):
            safefs.read_file(fd, "fifo", max_bytes=10)  # would block without O_NONBLOCK
        with pytest.raises(safefs.FileTooLarge):
            safefs.read_file(fd, "big", max_bytes=10)
        assert safefs.read_file(fd, "missing", max_bytes=10) is None
        assert safefs.read_file(fd, "ok", max_bytes=10) == b"40001"


def test_remove_tree_never_follows_a_link_at_the_top_or_below(root: Path, outside: Path) -> None:
    (root / "top-link").symlink_to(outside)
    tree = root / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "into-outside").symlink_to(outside)
    (tree / "sub" / "file-link").symlink_to(outside / "passwd")
    (tree / "file").write_text("x")
    with safefs.opened(safefs.open_root(root)) as fd:
        assert safefs.remove_tree(fd, "top-link")
        assert safefs.remove_tree(fd, "tree")
        assert not safefs.remove_tree(fd, "tree")
    assert os.listdir(root) == []
    assert untouched(outside)


def test_verify_link_free(root: Path, outside: Path) -> None:
    (root / "cloudStorage" / "40001" / "Google Drive").mkdir(parents=True)
    safefs.verify_link_free(root, ["cloudStorage", "40001", "Google Drive"])
    (root / "cloudStorage" / "40002").symlink_to(outside)
    with pytest.raises(safefs.UnexpectedEntry):
        safefs.verify_link_free(root, ["cloudStorage", "40002"])
    (outside / "Dropbox").mkdir()
    with pytest.raises(safefs.UnexpectedEntry):
        safefs.verify_link_free(root, ["cloudStorage", "40002", "Dropbox"])
    with pytest.raises(FileNotFoundError):
        safefs.verify_link_free(root, ["cloudStorage", "40003"])
    (outside / "Dropbox").rmdir()
    assert untouched(outside)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\0b"])
def test_only_single_components_are_accepted(root: Path, name: str) -> None:
    with safefs.opened(safefs.open_root(root)) as fd, pytest.raises(ValueError, match="single"):
        safefs.write_file(fd, name, b"x")


def test_probe_writable(root: Path) -> None:
    safefs.probe_writable(root, ["containerResourceMappings"])
    assert os.listdir(root / "containerResourceMappings") == []


def test_private_files_never_go_through_links(tmp_path: Path, outside: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    for name in ("auth_secret", "key.pem", "cert.pem", ".key.pem.tmp", "rclone.conf"):
        (private / name).symlink_to(outside / "passwd")
    # A link is no secret: reading through it would make a host file the API's secret.
    secret = load_or_create_auth_secret(private / "auth_secret")
    assert secret != "root:x:0:0"
    assert (private / "auth_secret").read_text() == secret
    assert stat.S_IMODE((private / "auth_secret").lstat().st_mode) == 0o600
    files = generate_certificate(private)
    assert files.keyfile.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert not files.keyfile.is_symlink()
    assert not files.certfile.is_symlink()
    write_private_file(private / "rclone.conf", "[remote]")
    assert (private / "rclone.conf").read_text() == "[remote]"
    assert untouched(outside)


def test_remove_tree_never_empties_a_mount_below_it(root: Path) -> None:
    mount_point = root / "tree" / "Google Drive"
    mount_point.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
        timeout=10,
    )
    if os.geteuid() != 0 or mounted.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        (mount_point / "a user's file").write_text("precious")
        with safefs.opened(safefs.open_root(root)) as fd, pytest.raises(safefs.UnexpectedEntry):
            safefs.remove_tree(fd, "tree")
        assert (mount_point / "a user's file").read_text() == "precious"
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=10)
