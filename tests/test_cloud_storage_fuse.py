"""CloudStorage with the real rclone and real FUSE mounts.

The provider's backend is replaced by rclone's `local` backend (a directory standing for the
Drive) through `backend_override`, the only difference from production: the config file,
the `rclone mount --daemon` command line, /proc/self/mountinfo and fusermount3 are real.
Every test is bounded by `trio.fail_after`; mounts left by a failing test are unmounted by
the fixture.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from fractal_hostd.cloud_storage.mountinfo import is_mounted, mounts_under, read_mounts
from fractal_hostd.cloud_storage.mounts import (
    Backend,
    CloudStorage,
    MountFailed,
    MountOptions,
    MountRequest,
    check_prerequisites,
)
from fractal_hostd.cloud_storage.rclone_mount import mount_answers
from tests.cloud_storage_fixtures import (
    CLIENT_ID,
    CLIENT_SECRET,
    CONTAINER_ID,
    PORT,
    TOKEN,
    assert_no_secret,
    config_dir,
    root,
)
from tests.cloud_storage_fixtures import mount as fixtures_mount

__all__ = ["config_dir", "root"]  # fixtures

LIMIT = 30  # real FUSE mounts take longer than the fakes


def fuse_unusable() -> str | None:
    problems = [f"{name}: {detail}" for name, ok, detail in check_prerequisites() if not ok]
    return "; ".join(problems) or None


FUSE_PROBLEM = fuse_unusable()
needs_fuse = pytest.mark.skipif(
    FUSE_PROBLEM is not None, reason=f"FUSE mounts with rclone unusable here: {FUSE_PROBLEM}"
)


@pytest.fixture
def backend_dir(tmp_path: Path) -> Path:
    path = tmp_path / "backend"
    path.mkdir()
    return path


def local_storage(root: Path, config_dir: Path, backend_dir: Path) -> CloudStorage:
    return CloudStorage(
        root=root,
        config_dir=config_dir,
        cache_dir=config_dir.parent.parent / "rclone-cache",
        options=MountOptions(write_back=0.1),
        backend_override=lambda host_port, provider: Backend("local", str(backend_dir)),
    )


@pytest.fixture
async def storage(root: Path, config_dir: Path, backend_dir: Path) -> AsyncIterator[CloudStorage]:
    storage = local_storage(root, config_dir, backend_dir)
    yield storage
    with trio.move_on_after(LIMIT):
        await storage.unmount_all()
    for entry in mounts_under(await read_mounts(), root):  # a failed test's mounts
        subprocess.run(["fusermount3", "-u", "-z", str(entry.mount_point)], check=False)


async def mount(storage: CloudStorage, provider: str = "google_drive") -> Path:
    """The shared test mount, with the longer bound of a real FUSE mount."""
    return await fixtures_mount(storage, provider, bound=LIMIT)


async def wait_for_file(path: Path, content: str) -> None:
    """Write-back: the file reaches the backend shortly after it is closed."""
    while not (path.exists() and path.read_text() == content):
        await trio.sleep(0.05)


def rclone_daemon_pid(config_path: Path) -> int:
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"--daemon" in cmdline and str(config_path).encode() in cmdline:
            return int(proc.name)
    raise AssertionError("no rclone daemon found")


@pytest.mark.fuse
@needs_fuse
async def test_files_written_through_the_mount_reach_the_backend(
    storage: CloudStorage, backend_dir: Path, root: Path, config_dir: Path
) -> None:
    with trio.fail_after(LIMIT):
        mount_point = await mount(storage)

        assert is_mounted(await read_mounts(), mount_point, "fuse.rclone")
        info = await trio.to_thread.run_sync(os.stat, mount_point)
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1000, 1000, 0o770)
        await trio.to_thread.run_sync((mount_point / "note.txt").write_text, "hello drive")
        await wait_for_file(backend_dir / "note.txt", "hello drive")

        # Nothing secret where other users can look: the daemon's command line.
        cmdline = Path(f"/proc/{rclone_daemon_pid(config_dir / f'{PORT}-google_drive.conf')}")
        assert_no_secret((cmdline / "cmdline").read_bytes().decode())

        await storage.unmount_container(PORT)

        assert not is_mounted(await read_mounts(), mount_point)
        assert not (root / "cloudStorage" / str(PORT)).exists()
        assert not any(p.is_file() for p in config_dir.rglob("*"))
        assert (backend_dir / "note.txt").read_text() == "hello drive"


@pytest.fixture
async def open_root(backend_dir: Path) -> AsyncIterator[Path]:
    """A root other users can traverse (pytest's tmp_path is 0700), like /fractal (0755)."""
    directory = Path(tempfile.mkdtemp(prefix="fhtest-cloud-"))
    directory.chmod(0o755)
    yield directory / "fractal"
    for entry in mounts_under(await read_mounts(), directory):
        subprocess.run(["fusermount3", "-u", "-z", str(entry.mount_point)], check=False)
    if not mounts_under(await read_mounts(), directory):
        shutil.rmtree(directory)


@pytest.mark.fuse
@needs_fuse
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
async def test_the_container_user_may_write_and_other_users_may_not(
    open_root: Path, config_dir: Path, backend_dir: Path
) -> None:
    storage = local_storage(open_root, config_dir, backend_dir)

    async def write_as(uid: int, name: str) -> int:
        script = f'echo hi > "{mount_point / name}"'
        result = await trio.run_process(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c", script],
            check=False,
            capture_stderr=True,
        )
        return result.returncode

    with trio.fail_after(LIMIT):
        mount_point = await mount(storage, "dropbox")
        assert await write_as(1000, "by-container-user") == 0
        assert await write_as(1001, "by-someone-else") != 0
        await wait_for_file(backend_dir / "by-container-user", "hi\n")
        await storage.unmount_all()


@pytest.mark.fuse
@needs_fuse
async def test_a_file_saved_just_before_the_container_dies_is_uploaded(
    root: Path, config_dir: Path, backend_dir: Path
) -> None:
    """Production write-back delay; unmount right after the write: the drain keeps the file."""
    storage = CloudStorage(
        root=root,
        config_dir=config_dir,
        cache_dir=config_dir.parent.parent / "rclone-cache",
        backend_override=lambda host_port, provider: Backend("local", str(backend_dir)),
    )
    with trio.fail_after(LIMIT):
        mount_point = await mount(storage)
        await trio.to_thread.run_sync((mount_point / "saved.txt").write_text, "last words")

        await storage.unmount_container(PORT)

        assert (backend_dir / "saved.txt").read_text() == "last words"
        assert not is_mounted(await read_mounts(), mount_point)


@pytest.mark.fuse
@needs_fuse
async def test_a_file_saved_just_before_the_service_stops_is_uploaded(
    root: Path, config_dir: Path, backend_dir: Path
) -> None:
    """Production write-back delay (1 s); stop right after the write, under the supervisor's
    4 s unmount budget: the stop path lets the upload finish, then unmounts."""
    storage = CloudStorage(
        root=root,
        config_dir=config_dir,
        cache_dir=config_dir.parent.parent / "rclone-cache",
        unmount_timeout=1.5,
        backend_override=lambda host_port, provider: Backend("local", str(backend_dir)),
    )
    with trio.fail_after(LIMIT):
        mount_point = await mount(storage)
        await trio.to_thread.run_sync((mount_point / "saved.txt").write_text, "last words")

        with trio.move_on_after(4.0):
            await storage.unmount_all()

        assert (backend_dir / "saved.txt").read_text() == "last words"
        assert not is_mounted(await read_mounts(), mount_point)


@pytest.mark.fuse
@needs_fuse
async def test_second_request_refreshes_the_live_mount(
    storage: CloudStorage, config_dir: Path
) -> None:
    with trio.fail_after(LIMIT):
        mount_point = await mount(storage)
        config_path = config_dir / f"{PORT}-google_drive.conf"
        pid = rclone_daemon_pid(config_path)

        assert await mount(storage) == mount_point

        assert rclone_daemon_pid(config_path) == pid
        mounts = [e for e in await read_mounts() if e.mount_point == mount_point]
        assert len(mounts) == 1


@pytest.mark.fuse
@needs_fuse
async def test_a_dead_rclone_is_replaced_on_the_next_request(
    storage: CloudStorage, config_dir: Path
) -> None:
    with trio.fail_after(LIMIT):
        mount_point = await mount(storage)
        config_path = config_dir / f"{PORT}-google_drive.conf"
        dead = rclone_daemon_pid(config_path)
        os.kill(dead, signal.SIGKILL)
        while await mount_answers(mount_point):  # until the kernel says ENOTCONN
            await trio.sleep(0.05)

        assert await mount(storage) == mount_point

        assert rclone_daemon_pid(config_path) != dead
        await trio.to_thread.run_sync(os.listdir, mount_point)  # answers again


@pytest.mark.fuse
@needs_fuse
async def test_remove_leftovers_unmounts_what_a_previous_run_left(
    storage: CloudStorage, root: Path, config_dir: Path, backend_dir: Path
) -> None:
    with trio.fail_after(LIMIT):
        mount_point = await mount(storage)
        restarted = local_storage(root, config_dir, backend_dir)

        await restarted.remove_leftovers()

        assert not is_mounted(await read_mounts(), mount_point)
        assert not (root / "cloudStorage" / str(PORT)).exists()
        assert not any(p.is_file() for p in config_dir.rglob("*"))


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is not installed")
async def test_drive_with_made_up_tokens_fails_with_rclones_reason(
    root: Path, config_dir: Path
) -> None:
    storage = CloudStorage(
        root=root,
        config_dir=config_dir,
        cache_dir=config_dir.parent.parent / "rclone-cache",
        mount_timeout=10.0,
    )
    with trio.fail_after(LIMIT), pytest.raises(MountFailed) as failure:
        await mount(storage)

    message = str(failure.value)
    if "within" in message:
        pytest.skip(f"the Google API neither fails nor answers quickly here: {message}")
    assert message.startswith("rclone mount failed (exit 1): Failed to create file system")
    assert_no_secret(message)
    assert not (root / "cloudStorage" / str(PORT)).exists()
    assert not any(p.is_file() for p in config_dir.rglob("*"))


@pytest.mark.fuse
@needs_fuse
async def test_a_file_left_pending_at_stop_is_uploaded_by_the_containers_next_mount(
    root: Path, config_dir: Path, backend_dir: Path
) -> None:
    """The stop's budget runs out before the write-back (60 s): the file stays in the kept
    cache, and the same container's mount after the restart uploads it."""
    cache_dir = config_dir.parent.parent / "rclone-cache"

    def storage_with(write_back: float) -> CloudStorage:
        return CloudStorage(
            root=root,
            config_dir=config_dir,
            cache_dir=cache_dir,
            unmount_timeout=1.5,
            options=MountOptions(write_back=write_back),
            backend_override=lambda host_port, provider: Backend("local", str(backend_dir)),
        )

    before_stop = storage_with(60.0)
    with trio.fail_after(LIMIT):
        mount_point = await mount(before_stop)
        await trio.to_thread.run_sync((mount_point / "saved.txt").write_text, "last words")
        with trio.move_on_after(2.0):
            await before_stop.unmount_all()
        assert not (backend_dir / "saved.txt").exists()
        while is_mounted(await read_mounts(), mount_point):  # the lazy unmount completing
            await trio.sleep(0.1)
        # The stop removes the private dir; the cache is elsewhere and stays.
        shutil.rmtree(config_dir.parent)

        after_restart = storage_with(0.1)
        await after_restart.remove_leftovers()
        await mount(after_restart)
        while not (backend_dir / "saved.txt").exists():
            await trio.sleep(0.1)
        assert (backend_dir / "saved.txt").read_text() == "last words"
        await after_restart.unmount_all()


@pytest.mark.fuse
@needs_fuse
@pytest.mark.parametrize("link_at", ["port dir", "provider folder"])
async def test_a_planted_link_gets_no_mount_and_no_unmount(
    storage: CloudStorage, root: Path, tmp_path: Path, link_at: str
) -> None:
    """On the kernel's own mount table: nothing mounted through the link, its target (here
    another live mount, someone else's Drive) left mounted."""
    victim = tmp_path / "victim"
    (victim / "Google Drive").mkdir(parents=True)
    (root / "cloudStorage" / str(PORT)).mkdir(parents=True)
    if link_at == "port dir":
        (root / "cloudStorage" / str(PORT)).rmdir()
        (root / "cloudStorage" / str(PORT)).symlink_to(victim)
        target = victim / "Google Drive"
    else:
        (root / "cloudStorage" / str(PORT) / "Google Drive").symlink_to(victim / "Google Drive")
        target = victim / "Google Drive"
    other = await storage.mount(
        MountRequest(PORT + 1, "google_drive", TOKEN, CLIENT_ID, CLIENT_SECRET),
        container_id=CONTAINER_ID,
    )

    with trio.fail_after(LIMIT), pytest.raises(MountFailed, match="symbolic link"):
        await mount(storage)
    mounts = await read_mounts()
    assert mounts_under(mounts, victim) == []
    assert not is_mounted(mounts, target)

    # A mount listed at the linked name would be unmounted through the link: put the victim
    # link on the other (live) mount, then clean the port up.
    link = root / "cloudStorage" / str(PORT)
    if link_at == "port dir":
        link.unlink()
        link.symlink_to(other.parent)
    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)
        await storage.remove_leftovers()
    assert is_mounted(await read_mounts(), other)
    assert (victim / "Google Drive").is_dir()
