"""CloudStorage against recording fakes of rclone and the unmount tools (no FUSE needed).

Rules: the fakes are real executables (tests/fakes/fake_rclone.py) that record their argv,
environment and the config file they were given; "mounted" is a line in a fake mountinfo
file, exactly what the service reads from /proc/self/mountinfo in production. Every test
runs under an absolute `trio.fail_after`; none asserts wall-clock speed. No log record of any
test may contain a token or the client secret.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fractal_hostd.cloud_storage import rclone_mount
from fractal_hostd.cloud_storage.mounts import CloudStorage, MountFailed, MountRequest, OAuthToken
from fractal_hostd.process import child_process
from tests.cloud_storage_fixtures import (
    ACCESS_TOKEN,
    CLIENT_ID,
    CLIENT_SECRET,
    CONTAINER_ID,
    LIMIT,
    OTHER_CONTAINER_ID,
    PORT,
    REFRESH_TOKEN,
    TOKEN,
    FakeTools,
    assert_no_secret,
    config_dir,
    mount,
    root,
    tools,
)

__all__ = ["config_dir", "root", "tools"]  # fixtures


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert_no_secret(record.getMessage(), repr(record.__dict__))


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "rclone-cache"  # where FakeTools.storage puts it


@pytest.fixture
def storage(tools: FakeTools, root: Path, config_dir: Path) -> CloudStorage:
    return tools.storage(root, config_dir)


def config_values(text: str) -> dict[str, str]:
    """Our writer quotes every value with backticks (see rclone_config.ini_value)."""
    values = {}
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(" = ")
        values[key] = value.removeprefix("`").removesuffix("`")
    return values


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_mount_gives_rclone_a_private_config_and_no_secret_on_its_command_line(
    storage: CloudStorage, tools: FakeTools, root: Path, config_dir: Path, cache_dir: Path
) -> None:
    mount_point = await mount(storage)

    assert mount_point == root / "cloudStorage" / str(PORT) / "Google Drive"
    [call] = tools.calls("rclone")
    config_path = config_dir / f"{PORT}-google_drive.conf"
    assert call["argv"] == [
        "mount",
        f"google_drive-{PORT}:",
        str(mount_point),
        "--config",
        str(config_path),
        "--cache-dir",
        str(cache_dir / f"{PORT}-google_drive-{CONTAINER_ID}"),
        "--daemon",
        "--daemon-wait",
        "5000ms",
        "--allow-other",
        "--default-permissions",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--umask",
        "0007",
        "--vfs-cache-mode",
        "writes",
        "--vfs-write-back",
        "1000ms",
        "--ask-password=false",
    ]
    assert_no_secret(*call["argv"], *call["env"].values())
    assert call["config"]["mode"] == 0o600
    text = call["config"]["text"]
    assert text.splitlines()[0] == f"[google_drive-{PORT}]"
    values = config_values(text)
    assert values["type"] == "drive"
    assert values["client_id"] == CLIENT_ID
    assert values["client_secret"] == CLIENT_SECRET
    assert json.loads(values["token"]) == {
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "refresh_token": REFRESH_TOKEN,
        "expiry": "2099-01-01T00:00:00+00:00",
    }
    assert mode(config_dir) == 0o700
    assert mode(config_path) == 0o600
    assert storage.mounted_providers(PORT) == ["google_drive"]


async def test_dropbox_mounts_the_dropbox_backend_at_its_folder(
    storage: CloudStorage, tools: FakeTools, root: Path
) -> None:
    mount_point = await mount(storage, "dropbox", client_id=None, client_secret=None)

    assert mount_point == root / "cloudStorage" / str(PORT) / "Dropbox"
    [call] = tools.calls("rclone")
    assert call["argv"][1] == f"dropbox-{PORT}:"
    values = config_values(call["config"]["text"])
    assert values["type"] == "dropbox"
    assert "client_id" not in values
    assert "client_secret" not in values
    assert storage.mounted_providers(PORT) == ["dropbox"]


async def test_second_request_rewrites_credentials_without_mounting_again(
    storage: CloudStorage, tools: FakeTools, config_dir: Path
) -> None:
    first = await mount(storage)
    config_path = config_dir / f"{PORT}-google_drive.conf"
    inode = config_path.stat().st_ino
    fresh = OAuthToken("ya29.FRESH-access", "1//FRESH-refresh", "2099-06-01T00:00:00Z", "Bearer")

    second = await mount(storage, token=fresh)

    assert second == first
    assert len(tools.calls("rclone")) == 1
    token = json.loads(config_values(config_path.read_text())["token"])
    assert token["access_token"] == "ya29.FRESH-access"
    assert token["refresh_token"] == "1//FRESH-refresh"
    # Replaced by rename (rclone never reads half a file), still private.
    assert config_path.stat().st_ino != inode
    assert mode(config_path) == 0o600
    assert tools.calls("fusermount3") == []


async def test_new_container_on_the_same_port_gets_a_fresh_mount(
    storage: CloudStorage, tools: FakeTools
) -> None:
    mount_point = await mount(storage)
    await mount(storage, container_id=OTHER_CONTAINER_ID)

    assert [c["argv"] for c in tools.calls("fusermount3")] == [["-u", "-z", str(mount_point)]]
    assert len(tools.calls("rclone")) == 2
    assert tools.mounted().count(str(mount_point).replace(" ", "\\040")) == 1


async def test_request_of_a_container_gone_while_it_waited_spares_the_new_containers_mount(
    storage: CloudStorage, tools: FakeTools
) -> None:
    # The old container's request waited for its turn while the port's next container mounted
    # the same provider; by then the old container is gone.
    mount_point = await mount(storage, container_id=OTHER_CONTAINER_ID)

    with pytest.raises(MountFailed, match=f"no container with host port {PORT}"):
        with trio.fail_after(LIMIT):
            await storage.mount(
                MountRequest(PORT, "google_drive", TOKEN, None, None),
                container_id=CONTAINER_ID,
                is_current=lambda: False,
            )

    assert tools.calls("fusermount3") == []
    assert len(tools.calls("rclone")) == 1
    assert storage.mounted_providers(PORT) == ["google_drive"]
    assert str(mount_point).replace(" ", "\\040") in tools.mounted()


async def test_a_vanished_mount_is_mounted_again(storage: CloudStorage, tools: FakeTools) -> None:
    mount_point = await mount(storage)
    tools.mountinfo.write_text(tools.mounted().replace("fuse.rclone google_drive", "gone"))
    assert str(mount_point).replace(" ", "\\040") in tools.mounted()

    await mount(storage)

    assert len(tools.calls("rclone")) == 2


async def test_rclone_error_is_reported_without_secrets_and_cleaned_up(
    storage: CloudStorage, tools: FakeTools, root: Path, config_dir: Path
) -> None:
    tools.behave(
        "rclone",
        exit=1,
        stderr=f"2026/01/01 10:00:00 Failed to create file system: token {ACCESS_TOKEN} "
        f"secret {CLIENT_SECRET} refresh {REFRESH_TOKEN}\n",
    )
    with pytest.raises(MountFailed) as failure:
        await mount(storage)

    message = str(failure.value)
    assert message.startswith("rclone mount failed (exit 1): Failed to create file system")
    assert "[redacted]" in message
    assert_no_secret(message)
    assert not (config_dir / f"{PORT}-google_drive.conf").exists()
    assert not (root / "cloudStorage" / str(PORT)).exists()
    assert storage.mounted_providers(PORT) == []


async def test_rclone_that_never_returns_is_bounded(
    tools: FakeTools, root: Path, config_dir: Path
) -> None:
    tools.behave("rclone", sleep=30)
    storage = tools.storage(root, config_dir, mount_timeout=0.5)

    with pytest.raises(MountFailed, match=r"did not finish within 0.5 s"):
        await mount(storage)

    assert not (config_dir / f"{PORT}-google_drive.conf").exists()
    assert not (root / "cloudStorage" / str(PORT)).exists()


async def test_success_without_a_mount_is_a_failure(
    tools: FakeTools, root: Path, config_dir: Path
) -> None:
    tools.behave("rclone", mount=False)
    storage = tools.storage(root, config_dir, mount_timeout=0.5)

    with pytest.raises(MountFailed, match=r"no mount appeared within 0.5 s"):
        await mount(storage)

    assert storage.mounted_providers(PORT) == []


async def test_missing_rclone_is_a_mount_failure(
    root: Path, config_dir: Path, cache_dir: Path
) -> None:
    storage = CloudStorage(
        root=root,
        config_dir=config_dir,
        cache_dir=config_dir / "cache",
        rclone="/nonexistent/rclone",
    )

    with pytest.raises(MountFailed, match=r"cannot run /nonexistent/rclone"):
        await mount(storage)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"client_secret": "line\nbreak"}, "client_secret"),
        ({"client_id": "x%(type)s"}, "client_id"),
        ({"token": OAuthToken("a\nb", REFRESH_TOKEN, "", "Bearer")}, "access_token"),
        ({"token": OAuthToken(ACCESS_TOKEN, "r\r", "", "Bearer")}, "refresh_token"),
        ({"token": OAuthToken(ACCESS_TOKEN, REFRESH_TOKEN, "tomorrow", "Bearer")}, "expiry"),
        ({"provider": "onedrive"}, "provider"),
        ({"host_port": 0}, "host_port"),
    ],
)
async def test_invalid_values_are_refused_before_rclone_runs(
    storage: CloudStorage, tools: FakeTools, change: dict[str, object], field: str
) -> None:
    with pytest.raises(MountFailed, match=field) as failure:
        await mount(storage, **change)  # type: ignore[arg-type]

    assert_no_secret(str(failure.value))
    assert tools.calls() == []


async def test_concurrent_requests_for_one_mount_run_rclone_once(
    storage: CloudStorage, tools: FakeTools
) -> None:
    tools.behave("rclone", sleep=0.3)
    results: list[Path] = []

    async def request() -> None:
        results.append(await mount(storage))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request)
        nursery.start_soon(request)

    assert len(tools.calls("rclone")) == 1
    assert results[0] == results[1]


async def test_cancelled_mount_leaves_nothing_behind(
    tools: FakeTools, root: Path, config_dir: Path
) -> None:
    tools.behave("rclone", sleep=30)
    storage = tools.storage(root, config_dir)

    with trio.move_on_after(0.5):
        await mount(storage)

    assert not (config_dir / f"{PORT}-google_drive.conf").exists()
    assert not (root / "cloudStorage" / str(PORT)).exists()
    assert storage.mounted_providers(PORT) == []


async def test_service_rclone_variables_do_not_reach_rclone(
    storage: CloudStorage, tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RCLONE_CONFIG", "/etc/elsewhere.conf")
    await mount(storage)

    [call] = tools.calls("rclone")
    assert "RCLONE_CONFIG" not in call["env"]


async def test_systemd_notify_variables_do_not_reach_rclone(
    storage: CloudStorage, tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rclone mount sends READY=1 (and would ping a watchdog) to $NOTIFY_SOCKET itself.
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    await mount(storage)

    [call] = tools.calls("rclone")
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(call["env"])


async def test_unmount_container_unmounts_lazily_and_removes_files_and_dirs(
    storage: CloudStorage, tools: FakeTools, root: Path, config_dir: Path
) -> None:
    drive = await mount(storage)
    dropbox = await mount(storage, "dropbox")

    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)

    assert [c["argv"] for c in tools.calls("fusermount3")] == [
        ["-u", "-z", str(drive)],
        ["-u", "-z", str(dropbox)],
    ]
    assert "fuse.rclone google_drive" not in tools.mounted()
    assert "fuse.rclone dropbox" not in tools.mounted()
    assert not (root / "cloudStorage" / str(PORT)).exists()
    assert files_under(config_dir) == []
    assert storage.mounted_providers(PORT) == []

    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)  # idempotent: nothing left to do
    assert len(tools.calls("fusermount3")) == 2


async def test_unmount_falls_back_to_fusermount_then_umount(
    storage: CloudStorage, tools: FakeTools
) -> None:
    mount_point = await mount(storage)
    tools.behave("fusermount3", exit=1, stderr="fusermount3: failed\n")
    tools.behave("fusermount", exit=1, stderr="fusermount: failed\n")

    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)

    assert [c["argv"] for c in tools.calls("umount")] == [["-l", str(mount_point)]]
    assert "fuse.rclone google_drive" not in tools.mounted()


async def test_unmount_failure_is_logged_not_raised(
    storage: CloudStorage, tools: FakeTools, caplog: pytest.LogCaptureFixture
) -> None:
    await mount(storage)
    for role in ("fusermount3", "fusermount", "umount"):
        tools.behave(role, exit=1, stderr=f"{role}: device busy\n")

    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)

    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "could not unmount" in error.getMessage()
    assert "umount: device busy" in error.getMessage()


async def test_missing_unmount_tools_fall_through(
    tools: FakeTools, root: Path, config_dir: Path
) -> None:
    storage = tools.storage(
        root,
        config_dir,
        unmount_commands=[["/nonexistent/fusermount3", "-u", "-z"], [tools.path("umount"), "-l"]],
    )
    await mount(storage)

    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)

    assert len(tools.calls("umount")) == 1
    assert "fuse.rclone google_drive" not in tools.mounted()


async def test_remove_leftovers_cleans_only_our_area(
    storage: CloudStorage, tools: FakeTools, root: Path, config_dir: Path, cache_dir: Path
) -> None:
    base = root / "cloudStorage"
    leftover = base / "40000" / "Dropbox"
    leftover.mkdir(parents=True)
    tools.add_mount(leftover)
    (base / "40001" / "Google Drive").mkdir(parents=True)  # empty: removed
    kept = base / "40002" / "Google Drive"
    kept.mkdir(parents=True)
    (kept / "user-file").write_text("not ours to delete")
    config_dir.mkdir(parents=True)
    for name in ("40000-dropbox.conf", "40000-dropbox.conf123456", ".40000-dropbox.conf.tmp"):
        (config_dir / name).write_text("[stale]\n")
    (cache_dir / f"40000-dropbox-{CONTAINER_ID}" / "vfs").mkdir(parents=True)  # nothing pending
    pending = mark_upload_pending(cache_dir, "google_drive")  # a user's unsent file

    with trio.fail_after(LIMIT):
        await storage.remove_leftovers()

    assert [c["argv"] for c in tools.calls("fusermount3")] == [["-u", "-z", str(leftover)]]
    assert "/media/other" in tools.mounted()  # not under our root: untouched
    assert sorted(p.name for p in base.iterdir()) == ["40002"]
    assert (kept / "user-file").exists()
    assert files_under(config_dir) == []
    assert not (cache_dir / f"40000-dropbox-{CONTAINER_ID}").exists()
    assert pending.exists()

    with trio.fail_after(LIMIT):
        await storage.remove_leftovers()  # idempotent
    assert len(tools.calls("fusermount3")) == 1


async def test_remove_leftovers_without_any_directories_is_quiet(
    storage: CloudStorage, tools: FakeTools
) -> None:
    with trio.fail_after(LIMIT):
        await storage.remove_leftovers()
        await storage.unmount_all()
    assert tools.calls() == []


async def test_unmount_all_unmounts_every_container(
    storage: CloudStorage, tools: FakeTools, root: Path, config_dir: Path
) -> None:
    await mount(storage, host_port=32768)
    await mount(storage, "dropbox", host_port=32769)

    with trio.fail_after(LIMIT):
        await storage.unmount_all()

    assert len(tools.calls("fusermount3")) == 2
    assert "fuse.rclone" not in tools.mounted().replace(
        "/media/other\\040fuse rw - fuse.rclone", ""
    )
    assert list((root / "cloudStorage").iterdir()) == []
    assert storage.mounted_providers(32768) == storage.mounted_providers(32769) == []
    assert files_under(config_dir) == []


async def test_unmount_all_is_not_held_up_by_one_hanging_unmount_tool(
    tools: FakeTools, root: Path, config_dir: Path, cache_dir: Path
) -> None:
    # fusermount3 hangs (a wedged FUSE mount); fusermount, the fallback, works. Each hang
    # costs the per-command limit: one after the other, two containers need two of them,
    # more than the shutdown budget allows.
    # The limit leaves the fallback tool, a Python script, time to start on a loaded machine.
    limit = 3.0
    storage = tools.storage(root, config_dir, unmount_timeout=limit)
    first = await mount(storage, host_port=32768)
    second = await mount(storage, "dropbox", host_port=32769)
    tools.behave("fusermount3", sleep=30, ignore_sigterm=True)

    started = trio.current_time()
    with trio.move_on_after(1.9 * limit):  # the supervisor's bound: < 2 x the per-command limit
        await storage.unmount_all()
    # The hung tool is killed, not waited for (trio.run_process: SIGTERM, 5 s, SIGKILL).
    assert trio.current_time() - started < 1.9 * limit + child_process.KILL_GRACE

    unmounted = {call["argv"][-1] for call in tools.calls("fusermount")}
    assert unmounted >= {str(first), str(second)}


def mark_upload_pending(
    cache_dir: Path,
    provider: str,
    dirty: bool = True,
    content: str | None = None,
    container_id: str = CONTAINER_ID,
) -> Path:
    """What rclone's VFS cache keeps for a written, not yet uploaded file."""
    cache = cache_dir / f"{PORT}-{provider}-{container_id}"
    meta = cache / "vfsMeta" / f"{provider}-{PORT}" / "doc"
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"Size": 3, "Dirty": dirty}) if content is None else content)
    return meta


async def upload_finishes_after(delay: float, tools: FakeTools, cache_dir: Path) -> None:
    """The pending upload of `mark_upload_pending` ends after `delay`; nothing is unmounted
    before."""
    await trio.sleep(delay)
    assert tools.calls("fusermount3") == []  # still waiting
    mark_upload_pending(cache_dir, "google_drive", dirty=False)


@pytest.mark.parametrize(
    "metadata",
    [None, "", '{"ModTime": "2026-'],
    ids=["dirty", "being-written-empty", "being-written-half"],
)
async def test_unmount_waits_for_pending_uploads(
    tools: FakeTools,
    root: Path,
    config_dir: Path,
    caplog: pytest.LogCaptureFixture,
    metadata: str | None,
    cache_dir: Path,
) -> None:
    storage = tools.storage(root, config_dir, drain_timeout=10.0)
    await mount(storage)
    meta = mark_upload_pending(cache_dir, "google_drive", content=metadata)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload_finishes_after, 0.3, tools, cache_dir)
            await storage.unmount_container(PORT)

    assert len(tools.calls("fusermount3")) == 1
    assert not meta.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert "waiting for 1 pending upload(s) before unmounting" in messages
    assert "pending uploads finished" in messages


async def test_unmount_of_a_dead_container_spares_a_new_containers_mount_on_its_port(
    tools: FakeTools, root: Path, config_dir: Path, cache_dir: Path
) -> None:
    storage = tools.storage(root, config_dir, drain_timeout=10.0)
    await mount(storage)
    mark_upload_pending(cache_dir, "google_drive")
    new_mount: list[Path] = []

    async def port_reused_while_draining() -> None:
        await trio.sleep(0.3)  # the old container's Drive upload is being waited for
        # Docker gave the port to a new container, whose user mounts Dropbox.
        new_mount.append(await mount(storage, "dropbox", container_id=OTHER_CONTAINER_ID))
        mark_upload_pending(cache_dir, "google_drive", dirty=False)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(port_reused_while_draining)
            await storage.unmount_container(PORT, container_id=CONTAINER_ID)

    assert storage.mounted_providers(PORT) == ["dropbox"]
    assert [c["argv"][-1] for c in tools.calls("fusermount3")] == [
        str(storage.mount_point(PORT, "google_drive"))
    ]
    assert new_mount == [storage.mount_point(PORT, "dropbox")]
    assert f"{new_mount[0]} " in tools.mounted().replace("\\040", " ")


async def test_unmount_gives_up_waiting_for_uploads_after_the_drain_timeout(
    tools: FakeTools,
    root: Path,
    config_dir: Path,
    caplog: pytest.LogCaptureFixture,
    cache_dir: Path,
) -> None:
    storage = tools.storage(root, config_dir, drain_timeout=0.3)
    await mount(storage)
    await mount(storage, "dropbox")
    mark_upload_pending(cache_dir, "google_drive")
    mark_upload_pending(cache_dir, "dropbox")

    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)

    assert len(tools.calls("fusermount3")) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        warnings
        == [
            "unmounting with 1 upload(s) still pending",
            "removing the cache of a gone mount with 1 upload(s) never sent",
        ]
        * 2
    )
    assert list(cache_dir.iterdir()) == []  # the container is gone: so are its caches


async def test_unmount_all_lets_pending_uploads_finish_within_its_budget(
    tools: FakeTools, root: Path, config_dir: Path, cache_dir: Path
) -> None:
    storage = tools.storage(root, config_dir, unmount_timeout=0.5)
    await mount(storage)
    meta = mark_upload_pending(cache_dir, "google_drive")

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload_finishes_after, 0.5, tools, cache_dir)
            with trio.move_on_after(4.0):  # the supervisor's budget
                await storage.unmount_all()

    assert len(tools.calls("fusermount3")) == 1
    assert not meta.exists()  # uploaded: the cache is gone with its mount
    assert list(cache_dir.iterdir()) == []


async def test_unmount_all_keeps_what_is_left_at_its_deadline_for_the_next_mount(
    tools: FakeTools,
    root: Path,
    config_dir: Path,
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = tools.storage(root, config_dir, unmount_timeout=0.5, drain_timeout=60.0)
    await mount(storage)
    meta = mark_upload_pending(cache_dir, "google_drive")

    with trio.fail_after(LIMIT):
        with trio.move_on_after(1.5) as budget:  # the upload never finishes
            await storage.unmount_all()
    assert not budget.cancelled_caught  # 0.5 s of it kept for the unmount itself

    assert len(tools.calls("fusermount3")) == 1
    assert "fuse.rclone google_drive" not in tools.mounted()
    assert meta.exists()
    messages = [r.getMessage() for r in caplog.records]
    assert "unmounting with 1 upload(s) still pending" in messages
    assert "1 upload(s) not sent at stop: kept in the cache for the next mount" in messages
    kept_at_start = "kept an rclone cache with 1 upload(s) not yet sent, for its next mount"
    assert kept_at_start not in messages  # said once at stop, not twice

    # The service starts again: the cache stays, and the container's next mount gets it.
    restarted = tools.storage(root, config_dir)
    with trio.fail_after(LIMIT):
        await restarted.remove_leftovers()
    assert meta.exists()
    assert kept_at_start in [r.getMessage() for r in caplog.records]
    await mount(restarted)
    argv = tools.calls("rclone")[-1]["argv"]
    assert argv[argv.index("--cache-dir") + 1] == str(meta.parents[2])


async def test_a_new_container_on_the_port_removes_the_previous_containers_cache(
    storage: CloudStorage, tools: FakeTools, cache_dir: Path
) -> None:
    old = mark_upload_pending(cache_dir, "google_drive", container_id=OTHER_CONTAINER_ID)

    await mount(storage)

    assert not old.parents[2].exists()  # never uploaded to the new container's Drive
    argv = tools.calls("rclone")[-1]["argv"]
    assert argv[argv.index("--cache-dir") + 1] == str(
        cache_dir / f"{PORT}-google_drive-{CONTAINER_ID}"
    )


async def test_unmount_does_not_wait_for_uploads_of_a_mount_that_is_gone(
    tools: FakeTools,
    root: Path,
    config_dir: Path,
    caplog: pytest.LogCaptureFixture,
    cache_dir: Path,
) -> None:
    storage = tools.storage(root, config_dir, drain_timeout=60.0)
    await mount(storage)
    mark_upload_pending(cache_dir, "google_drive")
    tools.mountinfo.write_text(tools.mounted().replace("fuse.rclone google_drive", "gone"))

    with trio.fail_after(LIMIT):
        await storage.unmount_container(PORT)

    pending = [r.getMessage() for r in caplog.records if "pending" in r.getMessage()]
    assert pending == ["unmounting with 1 upload(s) still pending"]


async def test_health_checks_of_a_hung_mount_cannot_use_up_the_process_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # A FUSE mount whose daemon hangs: stat() on it never returns (until released here).
    hung = tmp_path / "hung-mount"
    hung.mkdir()
    release = threading.Event()
    real_stat = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if isinstance(path, str | os.PathLike) and os.fspath(path) == str(hung):
            release.wait(timeout=30)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    default_limiter = trio.to_thread.current_default_thread_limiter()
    try:
        with trio.fail_after(1000):
            for _ in range(int(default_limiter.total_tokens) + 5):  # a refresh request each
                assert await rclone_mount.mount_answers(hung)  # slow is still mounted
        # Abandoned threads keep their tokens until they end: none of them is trio's own, so
        # the rest of the service (mountinfo reads, file work, Sentry flush) still has threads.
        assert default_limiter.borrowed_tokens == 0
    finally:
        release.set()
        try:
            health_limiter: trio.CapacityLimiter | None = rclone_mount._health_check_limiter.get()
        except LookupError:
            health_limiter = None
        while health_limiter is not None and health_limiter.borrowed_tokens:
            await trio.sleep(0.01)  # the hung threads end and hand back their tokens


# --- a mount against its container's death (the leak the chaos suite found) -----------------


async def test_a_mount_whose_container_died_while_rclone_ran_undoes_itself(
    tools: FakeTools, root: Path, config_dir: Path
) -> None:
    # The container dies while rclone mounts, and nobody unmounts for it (its death's unmount
    # found nothing yet, or the caller is cancelled right after): the mounter must undo it.
    tools.behave("rclone", sleep=0.5)
    storage = tools.storage(root, config_dir)
    alive = True

    async def die_while_mounting() -> None:
        nonlocal alive
        while not tools.calls("rclone"):
            await trio.sleep(0.01)
        alive = False

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(die_while_mounting)
            with pytest.raises(MountFailed, match=f"no container with host port {PORT}"):
                await storage.mount(
                    MountRequest(PORT, "google_drive", TOKEN, None, None),
                    container_id=CONTAINER_ID,
                    is_current=lambda: alive,
                )

    assert str(root / "cloudStorage") not in tools.mounted()
    assert storage.mounted_providers(PORT) == []
    assert not storage.has_mounts(PORT)
    assert not (root / "cloudStorage" / str(PORT)).exists()


async def test_the_death_of_a_container_cancels_its_mount_in_flight(
    tools: FakeTools, root: Path, config_dir: Path
) -> None:
    # rclone hangs; the container dies: its unmount must not wait for the mount's own time
    # limit (60 s here), and nothing may be left once it returns.
    tools.behave("rclone", sleep=120)
    storage = tools.storage(root, config_dir, mount_timeout=60.0)
    failures: list[Exception] = []

    async def mount_it() -> None:
        try:
            await storage.mount(
                MountRequest(PORT, "dropbox", TOKEN, None, None),
                container_id=CONTAINER_ID,
                is_current=lambda: True,
            )
        except MountFailed as exc:
            failures.append(exc)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mount_it)
            while not tools.calls("rclone"):
                await trio.sleep(0.01)
            assert storage.has_mounts(PORT)  # in flight: what a death's hook must see
            await storage.unmount_container(PORT, container_id=CONTAINER_ID)
            assert not storage.has_mounts(PORT)

    assert [str(exc) for exc in failures] == [f"no container with host port {PORT}"]
    assert str(root / "cloudStorage") not in tools.mounted()
    assert storage.mounted_providers(PORT) == []
    assert not (root / "cloudStorage" / str(PORT)).exists()


async def test_the_death_of_another_container_leaves_a_mount_in_flight_alone(
    tools: FakeTools, root: Path, config_dir: Path
) -> None:
    tools.behave("rclone", sleep=0.5)
    storage = tools.storage(root, config_dir)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mount, storage)
            while not tools.calls("rclone"):
                await trio.sleep(0.01)
            # The port's previous container: its late unmount must not cancel the new mount.
            await storage.unmount_container(PORT, container_id=OTHER_CONTAINER_ID)

    assert storage.mounted_providers(PORT) == ["google_drive"]
