"""Cloud storage: a container's Google Drive / Dropbox mounted with rclone over FUSE.

One rclone remote per (container, provider), each in a config file of its own in the private
`config_dir` (0700; files 0600 from their creation), mounted by `rclone mount --daemon` at
`$root/cloudStorage/<host_port>/<Google Drive|Dropbox>`. "Mounted" is what the kernel says
(/proc/self/mountinfo lists a `fuse.rclone` mount there), never only what we remember.

A second request for a mounted (container, provider) rewrites the config file atomically
instead of mounting again: rclone reloads a config file that changed on disk and, once its
cached access token expires, rereads the token from it before refreshing (rclone's
oauthutil.reReadToken), so the mount continues with the new credentials.

Unmounting never removes files recursively under `$root/cloudStorage` (a stale or live FUSE
mount there is somebody's Drive): only `rmdir` of directories that are empty.

Mount against death: a mount is registered as in flight (with the container it is for) in the
same step as its request is found current, before rclone runs, and stays registered until it
is in `_mounts`. The container's death (`unmount_container`) cancels an in-flight mount of
that container and then releases what is there; a mount that finishes and finds its container
no longer current undoes itself before it answers. Whichever comes first, no mount outlives
its container (docs/chaos.md, the leak the chaos suite found).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from fractal_hostd.cloud_storage.check import check_prerequisites
from fractal_hostd.cloud_storage.fuse_unmount import DEFAULT_UNMOUNT_COMMANDS, lazy_unmount
from fractal_hostd.cloud_storage.layout import Key, Layout, UnsafePath
from fractal_hostd.cloud_storage.mountinfo import (
    PROC_MOUNTINFO,
    MountEntry,
    is_mounted,
    mounts_under,
    read_mounts,
)
from fractal_hostd.cloud_storage.rclone_cache import RcloneCaches
from fractal_hostd.cloud_storage.rclone_config import (
    PROVIDERS,
    Backend,
    InvalidSetting,
    MountOptions,
    MountRequest,
    OAuthToken,
    mount_argv,
    remote_name,
    render_config,
    secret_values,
)
from fractal_hostd.cloud_storage.rclone_mount import (
    FUSE_RCLONE,
    mount_answers,
    run_mount_command,
    wait_until_mounted,
)
from fractal_hostd.process.private_files import ensure_private_dir, write_private_file

__all__ = [
    "PROVIDERS",
    "Backend",
    "CloudStorage",
    "MountFailed",
    "MountOptions",
    "MountRequest",
    "OAuthToken",
    "check_prerequisites",
]

logger = logging.getLogger(__name__)

DRAIN_POLL_INTERVAL = 0.2

# Tests substitute a backend that needs no internet (rclone `local`) for the provider's.
BackendOverride = Callable[[int, str], Backend]


class MountFailed(Exception):
    """The mount could not be made; the message is safe to log and to answer with."""


@dataclass(frozen=True)
class _Mount:
    container_id: str
    mount_point: Path
    config_path: Path
    cache_dir: Path


@dataclass(frozen=True)
class _InFlight:
    """A mount being made: its container's death cancels `scope`."""

    container_id: str
    scope: trio.CancelScope


class CloudStorage:
    def __init__(
        self,
        *,
        root: Path,
        config_dir: Path,
        cache_dir: Path,
        rclone: str = "rclone",
        options: MountOptions = MountOptions(),  # noqa: B008 (frozen dataclass)
        mount_timeout: float = 20.0,
        drain_timeout: float = 10.0,
        unmount_timeout: float = 5.0,
        unmount_commands: Sequence[Sequence[str]] = DEFAULT_UNMOUNT_COMMANDS,
        mountinfo_path: Path = PROC_MOUNTINFO,
        backend_override: BackendOverride | None = None,
    ) -> None:
        self._layout = Layout(base=root / "cloudStorage", config_dir=config_dir)
        self._caches = RcloneCaches(cache_dir)
        self._rclone = rclone
        self._options = options
        self._mount_timeout = mount_timeout
        self._drain_timeout = drain_timeout
        self._unmount_timeout = unmount_timeout
        self._unmount_commands = unmount_commands
        self._mountinfo_path = mountinfo_path
        self._backend_override = backend_override
        self._mounts: dict[Key, _Mount] = {}
        self._in_flight: dict[Key, _InFlight] = {}
        self._locks: defaultdict[Key, trio.Lock] = defaultdict(trio.Lock)

    def mount_point(self, host_port: int, provider: str) -> Path:
        return self._layout.mount_point((host_port, provider))

    def mounted_providers(self, host_port: int) -> list[str]:
        return [provider for provider in PROVIDERS if (host_port, provider) in self._mounts]

    def has_mounts(self, host_port: int) -> bool:
        """Whether anything of this host port is mounted or being mounted: what a container's
        death must unmount (an in-flight mount counts, its unmount cancels it)."""
        return any(
            (host_port, provider) in self._mounts or (host_port, provider) in self._in_flight
            for provider in PROVIDERS
        )

    async def mount(
        self,
        request: MountRequest,
        *,
        container_id: str,
        is_current: Callable[[], bool] | None = None,
    ) -> Path:
        """The mount point once the mount is live; MountFailed (message safe to show) otherwise.

        `is_current` says whether `container_id` still holds `host_port`. It is asked once the
        request has its turn (requests for one mount point run one after the other): a request
        of a container that died while it waited must not replace the mount that the port's
        next container made meanwhile. It is asked again once the mount is made: a container
        that died meanwhile gets no mount (undone here, under the mount point's lock, shielded
        from the caller's cancellation), whether or not its death's unmount cancelled it.
        """
        host_port, provider, token = request.host_port, request.provider, request.token
        client_id, client_secret = request.client_id, request.client_secret
        if provider not in PROVIDERS:
            raise MountFailed(f"provider must be one of: {', '.join(PROVIDERS)}")
        if not 1 <= host_port <= 65535:
            raise MountFailed("host_port must be between 1 and 65535")
        backend = (
            self._backend_override(host_port, provider)
            if self._backend_override is not None
            else Backend(PROVIDERS[provider].rclone_type)
        )
        remote = remote_name(host_port, provider)
        try:
            config_text = render_config(remote, backend, token, client_id, client_secret)
        except InvalidSetting as exc:
            raise MountFailed(f"invalid {exc.field_name}: {exc.reason}") from None
        key = (host_port, provider)
        secrets = secret_values(token, client_secret)
        gone = MountFailed(f"no container with host port {host_port}")
        async with self._locks[key]:
            if is_current is not None and not is_current():
                raise gone
            # No checkpoint between the check above and this: a death handled from here on
            # finds the mount in flight (and cancels it) or, later, in `_mounts`.
            flight = _InFlight(container_id, trio.CancelScope())
            self._in_flight[key] = flight
            mount_point: Path | None = None
            try:
                with flight.scope:
                    mount_point = await self._mount_locked(
                        key, container_id, backend, config_text, secrets
                    )
            except OSError as exc:  # mountinfo unreadable, config not writable, ...
                raise MountFailed(f"cloud storage error: {exc.strerror}") from None
            finally:
                del self._in_flight[key]
            if mount_point is None or (is_current is not None and not is_current()):
                # Its container died while rclone mounted: nobody else will unmount this.
                logger.info(
                    "cloud storage mount undone: its container is gone",
                    extra={
                        "host_port": host_port,
                        "provider": provider,
                        "container_id": container_id,
                    },
                )
                await self._clean_up_after_failure(key)
                raise gone
            return mount_point

    async def _mount_locked(
        self,
        key: Key,
        container_id: str,
        backend: Backend,
        config_text: str,
        secrets: list[str],
    ) -> Path:
        host_port, provider = key
        context = {"host_port": host_port, "provider": provider, "container_id": container_id}
        mount_point = self._layout.mount_point(key)
        current = self._mounts.get(key)
        live = is_mounted(await self._read_mounts(), mount_point, FUSE_RCLONE)
        if current and current.container_id == container_id and live:
            if await mount_answers(mount_point):
                await trio.to_thread.run_sync(write_private_file, current.config_path, config_text)
                logger.info("cloud storage credentials refreshed", extra=context)
                return mount_point
            logger.warning("cloud storage mount is dead; mounting again", extra=context)
        if current is not None or live:
            await self._release(key)
        # The port is this container's now: what earlier containers left in their caches
        # is theirs and will never be uploaded (a same container's is, by the new rclone).
        cache_dir = self._caches.dir_for(key, container_id)
        for stale in await trio.to_thread.run_sync(self._caches.dirs_of, key):
            if stale != cache_dir:
                await trio.to_thread.run_sync(self._caches.remove, stale)
        argv = mount_argv(
            self._rclone,
            remote=remote_name(host_port, provider),
            backend=backend,
            mount_point=mount_point,
            config_path=self._layout.config_path(key),
            cache_dir=cache_dir,
            options=self._options,
        )
        await self._mount_new(key, argv, config_text, secrets, context)
        self._mounts[key] = _Mount(
            container_id, mount_point, self._layout.config_path(key), cache_dir
        )
        logger.info("cloud storage mounted", extra={**context, "mount_point": str(mount_point)})
        return mount_point

    async def unmount_container(
        self, host_port: int, *, drain: bool = True, container_id: str | None = None
    ) -> None:
        """The container is gone: unmount (lazily) everything of this host port, remove its
        files and its caches. Never raises.

        With `drain`, first waits (at most `drain_timeout` for the whole port) until rclone
        has uploaded what the container wrote: a container often dies right after its user
        saved a file, within the write-back delay, and unmounting would drop that upload.

        With `container_id` (the container that died), a mount made for another container
        is left alone: the providers are released one after the other, and while one drains,
        Docker may already have given the port to a new container that mounted the other.
        """
        for provider in PROVIDERS:
            flight = self._in_flight.get((host_port, provider))
            if flight is not None and container_id in (None, flight.container_id):
                flight.scope.cancel()  # the mount undoes itself, then we get the lock
        deadline = trio.current_time() + (self._drain_timeout if drain else 0.0)
        await self._unmount_port(
            host_port, container_id=container_id, deadline=deadline, keep_pending=False
        )

    async def unmount_all(self) -> None:
        """At shutdown: every mount of ours and every leftover. Never raises.

        Pending uploads get until the caller's deadline, less one unmount tool's limit kept
        for the unmount itself, and at most `drain_timeout`. Caches that still hold pending
        uploads then are kept (logged): the container's next mount, after the restart,
        uploads them.
        """
        # Side by side: one hung FUSE mount, whose unmount tools each wait out their limit,
        # must not use up the budget that every other container's unmount needs.
        now = trio.current_time()
        reserve = self._unmount_timeout
        deadline = min(now + self._drain_timeout, trio.current_effective_deadline() - reserve)
        async with trio.open_nursery() as nursery:
            for host_port in sorted({host_port for host_port, _ in self._mounts}):
                nursery.start_soon(
                    functools.partial(
                        self._unmount_port,
                        host_port,
                        container_id=None,
                        deadline=deadline,
                        keep_pending=True,
                    )
                )
        await self._remove_leftovers(report_kept=False)  # each was reported just now

    async def remove_leftovers(self) -> None:
        """At start-up: mounts under $root/cloudStorage (from mountinfo), stale config
        files, caches with nothing left to upload, empty mount directories. Never raises."""
        await self._remove_leftovers(report_kept=True)

    async def _remove_leftovers(self, *, report_kept: bool) -> None:
        await self._sweep_mounts(self._layout.base)
        try:
            await trio.to_thread.run_sync(self._layout.remove_stale_files, set(self._mounts))
            live = {mount.cache_dir for mount in self._mounts.values()}
            kept = await trio.to_thread.run_sync(self._caches.remove_clean, live)
        except Exception:
            logger.exception("could not remove stale cloud-storage files")
            return
        for cache_dir, pending in kept if report_kept else []:
            logger.warning(
                "kept an rclone cache with %d upload(s) not yet sent, for its next mount",
                pending,
                extra={"cache_dir": str(cache_dir)},
            )

    # --- internals -------------------------------------------------------------------------

    async def _unmount_port(
        self, host_port: int, *, container_id: str | None, deadline: float, keep_pending: bool
    ) -> None:
        for provider in PROVIDERS:
            key = (host_port, provider)
            try:
                async with self._locks[key]:
                    current = self._mounts.get(key)
                    if current is None or container_id in (None, current.container_id):
                        if current is not None:
                            await self._drain(key, current.cache_dir, deadline)
                        await self._release(key)
                        owner = current.container_id if current else container_id
                        if owner is not None:
                            await self._drop_cache(key, owner, keep_pending=keep_pending)
            except Exception:
                logger.exception("cloud storage cleanup failed", extra={"host_port": host_port})
            self._forget_lock(key)
        tried = {self.mount_point(host_port, provider) for provider in PROVIDERS}
        await self._sweep_mounts(self._layout.port_dir(host_port), tried=tried)

    async def _drop_cache(self, key: Key, container_id: str, *, keep_pending: bool) -> None:
        cache_dir = self._caches.dir_for(key, container_id)
        if keep_pending:
            pending = await trio.to_thread.run_sync(self._caches.remove_if_clean, cache_dir)
            if pending:
                logger.warning(
                    "%d upload(s) not sent at stop: kept in the cache for the next mount",
                    pending,
                    extra={"host_port": key[0], "provider": key[1], "cache_dir": str(cache_dir)},
                )
        else:
            await trio.to_thread.run_sync(self._caches.remove, cache_dir)

    async def _read_mounts(self) -> list[MountEntry]:
        return await read_mounts(self._mountinfo_path)

    async def _mount_new(
        self,
        key: Key,
        argv: list[str],
        config_text: str,
        secrets: list[str],
        context: dict[str, object],
    ) -> None:
        stage = "rclone mount did not finish"
        try:
            with trio.move_on_after(self._mount_timeout) as scope:
                error = await trio.to_thread.run_sync(self._prepare, key, config_text)
                if error is None:
                    error = await run_mount_command(argv, secrets)
                if error is None:
                    stage = "rclone reported success but no mount appeared"
                    await wait_until_mounted(self._mountinfo_path, self._layout.mount_point(key))
            if scope.cancelled_caught:
                error = f"{stage} within {self._mount_timeout:g} s"
        except BaseException:
            await self._clean_up_after_failure(key)
            raise
        if error is not None:
            await self._clean_up_after_failure(key)
            logger.warning("cloud storage mount failed: %s", error, extra=context)
            raise MountFailed(error)

    async def _clean_up_after_failure(self, key: Key) -> None:
        """Shielded and bounded: also runs when the request was cancelled. Never raises, so
        the original failure or Cancelled is what propagates."""
        with trio.move_on_after(self._unmount_timeout, shield=True):
            try:
                await self._release(key)
                for cache_dir in await trio.to_thread.run_sync(self._caches.dirs_of, key):
                    await trio.to_thread.run_sync(self._caches.remove_if_clean, cache_dir)
            except Exception:
                logger.exception("cleanup after a failed mount failed")

    def _prepare(self, key: Key, config_text: str) -> str | None:
        try:
            self._layout.make_mount_point(key)
            self._caches.prepare()
            ensure_private_dir(self._layout.config_dir)
            write_private_file(self._layout.config_path(key), config_text)
        except UnsafePath as exc:
            return f"not mounting: {exc.strerror}"
        except OSError as exc:
            return f"cannot prepare the mount: {exc.strerror} ({exc.filename})"
        return None

    async def _drain(self, key: Key, cache_dir: Path, deadline: float) -> None:
        context = {"host_port": key[0], "provider": key[1]}
        pending = await trio.to_thread.run_sync(self._caches.pending_uploads, cache_dir)
        if pending == 0:
            return
        live = is_mounted(await self._read_mounts(), self._layout.mount_point(key), FUSE_RCLONE)
        if live and trio.current_time() < deadline:  # no rclone, no upload: do not wait
            logger.info(
                "waiting for %d pending upload(s) before unmounting", pending, extra=context
            )
            with trio.move_on_at(deadline):
                while pending:  # rclone's cache metadata announces no changes: look again
                    await trio.sleep(DRAIN_POLL_INTERVAL)
                    pending = await trio.to_thread.run_sync(self._caches.pending_uploads, cache_dir)
                logger.info("pending uploads finished", extra=context)
                return
        logger.warning("unmounting with %d upload(s) still pending", pending, extra=context)

    async def _release(self, key: Key) -> None:
        """Unmount what is at this key's mount point, remove its files and empty dirs."""
        mount_point = self._layout.mount_point(key)
        known = self._mounts.pop(key, None)
        if is_mounted(await self._read_mounts(), mount_point) and await self._unmount(mount_point):
            container_id = known.container_id if known else None
            logger.info(
                "cloud storage unmounted",
                extra={"host_port": key[0], "provider": key[1], "container_id": container_id},
            )
        await trio.to_thread.run_sync(self._layout.remove_key_files, key)

    async def _unmount(self, mount_point: Path) -> bool:
        """Lazy unmount, only of a path verified link-free: a link planted on the way would
        make the tool unmount whatever it points to (another container's Drive)."""
        if not await trio.to_thread.run_sync(
            self._layout.is_link_free, mount_point, abandon_on_cancel=True
        ):
            logger.error(
                "not unmounting %s: a symbolic link or a non-directory on its path",
                mount_point,
                extra={"mount_point": str(mount_point)},
            )
            return False
        return await lazy_unmount(
            mount_point, self._unmount_commands, per_command_limit=self._unmount_timeout
        )

    async def _sweep_mounts(self, directory: Path, tried: set[Path] | None = None) -> None:
        """Unmount every mount below `directory` that is neither one of ours nor already
        `tried`, then remove the empty directories."""
        try:
            ours = {mount.mount_point for mount in self._mounts.values()}
            for entry in mounts_under(await self._read_mounts(), directory):
                if entry.mount_point not in ours | (tried or set()):
                    logger.info("unmounting leftover %s", entry.mount_point)
                    await self._unmount(entry.mount_point)
            await trio.to_thread.run_sync(self._layout.remove_empty_dirs, directory, ours)
        except Exception:
            logger.exception("cloud storage sweep of %s failed", directory)

    def _forget_lock(self, key: Key) -> None:
        lock = self._locks.get(key)
        if lock is not None and not lock.locked() and lock.statistics().tasks_waiting == 0:
            del self._locks[key]
