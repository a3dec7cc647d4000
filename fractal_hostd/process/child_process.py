"""Every process the service starts: an allow-listed environment and a bound that holds.

The environment. The service runs as root with secrets in its own environment
(FRACTAL_WEBSERVER_AUTH_SECRET, SENTRY_DSN, ...) and systemd's NOTIFY_SOCKET / WATCHDOG_*; a child
would inherit all of them, and /proc/<pid>/environ of a long-lived child (rclone's daemon) keeps
them readable for its whole life. A deny-list misses the next secret someone adds, so children
get an allow-list instead: what a tool needs to find programs, speak the locale and tell the
time, and a fixed HOME. `RCLONE_*` variables are not in it either: they would override the
config files the service writes for rclone.

The bound. `trio.run_process`, when cancelled, sends SIGTERM, waits 5 s, then SIGKILL, and then
waits for the process to exit, shielded, without any limit. An unmount tool stuck on a hung
FUSE mount ignores SIGTERM and can sit in an uninterruptible sleep where even SIGKILL takes
effect only once the kernel call returns: the caller's deadline would not hold. `run_child`
kills at once on cancellation, waits at most `KILL_GRACE` for the exit, and then leaves the
process behind (logged; the kernel reaps it when the service exits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import subprocess
from collections.abc import Mapping, Sequence
from typing import Final

import trio

logger = logging.getLogger(__name__)

ALLOWED_NAMES: Final = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR"})
ALLOWED_PREFIXES: Final = ("LC_",)
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_GRACE: Final = 0.5


def child_environment(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child process: the allow-listed names of `source` (default:
    this process's environment), PATH always set, HOME the home of the effective user."""
    source = os.environ if source is None else source
    env = {
        name: value
        for name, value in source.items()
        if name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)
    }
    env.setdefault("PATH", DEFAULT_PATH)
    env["HOME"] = _home()
    return env


def _home() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir or "/"
    except KeyError:  # an euid without a passwd entry
        return "/"


async def run_child(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` to completion with stdin empty and its output captured. OSError when it
    cannot be started. On cancellation the child is killed and waited for at most
    `KILL_GRACE`: the caller's cancel scope is the bound, and it holds."""
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_environment(),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    outputs: dict[str, bytes] = {}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_all, process.stdout, outputs, "stdout")
            nursery.start_soon(_read_all, process.stderr, outputs, "stderr")
            await process.wait()
    except BaseException:
        await _kill(process, argv[0])
        raise
    assert process.returncode is not None
    return subprocess.CompletedProcess(
        list(argv), process.returncode, outputs.get("stdout", b""), outputs.get("stderr", b"")
    )


async def _read_all(stream: trio.abc.ReceiveStream, outputs: dict[str, bytes], name: str) -> None:
    chunks = []
    async with stream:
        while chunk := await stream.receive_some():
            chunks.append(chunk)
    outputs[name] = b"".join(chunks)


async def _kill(process: trio.Process, program: str) -> None:
    """SIGKILL, a short shielded wait for the exit, then give up on it."""
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile
        process.kill()
    with trio.CancelScope(shield=True):
        with trio.move_on_after(KILL_GRACE):
            await process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()
    if process.returncode is None:
        logger.warning("%s (pid %d) did not exit after SIGKILL; left behind", program, process.pid)
