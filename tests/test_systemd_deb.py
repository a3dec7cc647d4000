"""The Debian package under a real systemd (issue 12).

A Debian 12 container boots systemd as PID 1 (scripts/build-systemd-test-image.sh), the .deb
built from this tree (scripts/build-deb.sh) is installed with apt, and the unit is checked with
systemctl and journalctl: READY=1 only after heartbeat 0, STATUS= lines, the watchdog, the
credential, stop and poweroff with their dying heartbeat, journald levels, the restart policy,
an upgrade that keeps TTYs, removal, and a FUSE mount under the unit's hardening.

The container shares the host's network (the fake webserver and IMDS of this test listen on
127.0.0.1) and reaches the real Docker engine through a stand-in docker.service (socat), so
that stopping "Docker" inside it stops only that relay. Skipped, with the reason, only when the
image cannot be built (no Docker engine, no debootstrap mirror).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import TEST_IMAGE
from tests.fakes.imds import FakeImds, running_fake_imds
from tests.fakes.webserver import FakeWebserver, running_fake_webserver

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
UNIT = "fractal-hostd.service"
SECRET = "systemd-stage-secret-" + uuid.uuid4().hex
LABEL = "fractal-hostd-test=systemd-deb"
TIMEOUT_STOP_S = 20  # TimeoutStopSec= of the unit


def _run(cmd: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


@pytest.fixture(scope="module")
def systemd_image(docker_socket: Path) -> str:
    proc = _run([str(REPO / "scripts/build-systemd-test-image.sh")], timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"the systemd test image cannot be built: {proc.stderr.strip()[-600:]}")
    return proc.stdout.split()[-1]


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built from this tree (FHD_TEST_DEB: use that one instead)."""
    given = os.environ.get("FHD_TEST_DEB")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("deb")
    proc = _run(
        [str(REPO / "scripts/build-deb.sh")],
        timeout=900,
        env={**os.environ, "FHD_DEB_OUT": str(out)},
    )
    assert proc.returncode == 0, f"make deb failed:\n{proc.stderr}"
    return Path(proc.stdout.split()[-1])


@dataclass
class Machine:
    """A booted systemd container."""

    name: str
    api_port: int = field(default_factory=lambda: _free_port())

    def run(self, *cmd: str, input: str | None = None, timeout: float = 120) -> str:
        proc = _run(["docker", "exec", "-i", self.name, *cmd], timeout=timeout, input=input)
        assert proc.returncode == 0, (
            f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
        return proc.stdout

    async def exec(self, *cmd: str, stdin: bytes = b"", timeout: float = 120) -> tuple[int, str]:
        with trio.fail_after(timeout):
            proc = await trio.run_process(
                ["docker", "exec", "-i", self.name, *cmd],
                stdin=stdin,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")

    async def ok(self, *cmd: str, stdin: bytes = b"", timeout: float = 120) -> str:
        rc, out = await self.exec(*cmd, stdin=stdin, timeout=timeout)
        assert rc == 0, f"{cmd} failed ({rc}):\n{out}"
        return out

    async def show(self, prop: str, unit: str = UNIT) -> str:
        return (await self.ok("systemctl", "show", "-p", prop, "--value", unit)).strip()

    async def wait_for(self, prop: str, value: str, *, timeout: float, unit: str = UNIT) -> None:
        with trio.fail_after(timeout):
            while await self.show(prop, unit) != value:
                await trio.sleep(0.2)

    async def journal(self, *args: str, after: int = 0) -> list[dict[str, Any]]:
        """Entries as JSON; `after`: only those later than that __REALTIME_TIMESTAMP (journalctl's
        own --after-cursor drops entries when combined with -p and -u, systemd 252)."""
        # --all: without it, fields over 4 KiB (a line with a traceback) come back as null.
        out = await self.ok("journalctl", "--no-pager", "--all", "-o", "json", *args)
        entries = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in entries if int(e["__REALTIME_TIMESTAMP"]) > after]

    async def now(self) -> int:
        """A journal position: the last entry's time (for `journal(after=...)`)."""
        (last,) = await self.journal("-n", "1")
        return int(last["__REALTIME_TIMESTAMP"])

    async def configure(self, ws: FakeWebserver, imds: FakeImds, **extra: str) -> None:
        env = {
            "APP_ENV": "prod",
            "FRACTAL_WEBSERVER_URL": ws.url,
            "FRACTAL_IMDS_URL": imds.url,
            "FRACTAL_API_BIND": f"127.0.0.1:{self.api_port}",
            "FRACTAL_START_ECS_AGENT": "off",
            "FRACTAL_DOCKER_UNREACHABLE_BUDGET": "5",
            **extra,
        }
        text = "".join(f"{k}={v}\n" for k, v in env.items())
        await self.ok("sh", "-c", "umask 077 && cat > /etc/fractal-hostd/env", stdin=text.encode())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def boot(image: str, deb: Path, docker_socket: Path) -> Machine:
    """Boot systemd in a container, install the package, write the credential."""
    name = f"fhd-systemd-{uuid.uuid4().hex[:8]}"
    args = [
        "docker", "run", "-d", "--name", name, "--label", LABEL,
        "--cap-add", "SYS_ADMIN", "--tmpfs", "/run", "--tmpfs", "/run/lock",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--network", "host",
        "-v", f"{docker_socket}:/run/host-docker.sock",
    ]  # fmt: skip
    if Path("/dev/fuse").exists():
        args += ["--device", "/dev/fuse"]
    # systemd leaves mounts private; LoadCredential= then hands the service an empty directory.
    args += [image, "sh", "-c", "mount --make-rshared / && exec /sbin/init"]
    proc = _run(args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    machine = Machine(name)
    try:
        _set_up(machine, deb)
    except BaseException:
        remove(machine)  # a half-booted machine is no use to anyone
        raise
    return machine


def _set_up(machine: Machine, deb: Path) -> None:
    name = machine.name
    deadline = time.monotonic() + 90
    state = ""
    while time.monotonic() < deadline:  # until PID 1 answers on its bus, then its verdict
        state = _run(
            ["docker", "exec", name, "systemctl", "is-system-running", "--wait"], timeout=100
        ).stdout.strip()
        if state in ("running", "degraded"):
            break
        time.sleep(0.5)
    assert state == "running", machine.run("systemctl", "--failed", "--no-pager")
    assert _run(["docker", "cp", str(deb), f"{name}:/tmp/"], timeout=60).returncode == 0
    machine.run("apt-get", "install", "-y", "-q", f"/tmp/{deb.name}", timeout=300)
    machine.run(
        "sh", "-c",
        "umask 077 && cat > /etc/fractal-hostd/credentials/webserver_auth_secret",
        input=SECRET,
    )  # fmt: skip


def remove(machine: Machine) -> None:
    _run(["docker", "rm", "-f", machine.name], timeout=120)


@pytest.fixture(scope="module")
def machine(systemd_image: str, deb: Path, docker_socket: Path) -> Iterator[Machine]:
    booted = boot(systemd_image, deb, docker_socket)
    try:
        yield booted
    finally:
        remove(booted)


@dataclass
class Peers:
    ws: FakeWebserver
    imds: FakeImds


@pytest.fixture
async def peers(machine: Machine) -> AsyncIterator[Peers]:
    """Fresh fakes on loopback and an env file naming them; the service stopped afterwards."""
    async with running_fake_webserver() as ws, running_fake_imds() as imds:
        await machine.configure(ws, imds)
        try:
            yield Peers(ws, imds)
        finally:
            ws.heartbeat_blackhole = ws.handshake_blackhole = False
            # Docker first: starting it starts the service too (WantedBy=docker.service).
            await machine.exec("systemctl", "start", "docker.service")
            await machine.exec("systemctl", "stop", UNIT, timeout=60)
            await machine.exec("systemctl", "reset-failed", UNIT)


def dying(ws: FakeWebserver) -> list[Any]:
    return [hb for hb in ws.heartbeats if hb.get("IsDyingHeartbeat")]


async def start(machine: Machine) -> str:
    """`systemctl start`, then the main pid (the journal's tail when it fails)."""
    rc, out = await machine.exec("systemctl", "start", UNIT, timeout=120)
    if rc != 0:
        _, journal = await machine.exec("journalctl", "-u", UNIT, "-n", "40", "--no-pager")
        pytest.fail(f"systemctl start failed ({rc}): {out}\n{journal}")
    return await machine.show("MainPID")


# --- start-up --------------------------------------------------------------------------------


async def test_start_returns_only_after_heartbeat_0_and_status_says_what_start_up_does(
    machine: Machine, peers: Peers
) -> None:
    peers.ws.handshake_blackhole = True
    result: list[tuple[int, str]] = []

    async def start_and_record() -> None:
        result.append(await machine.exec("systemctl", "start", UNIT, timeout=120))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_and_record)
        await machine.wait_for("StatusText", "handshake with the webserver", timeout=60)
        assert await machine.show("ActiveState") == "activating"
        assert not result, "systemctl start returned before READY=1"
        assert peers.ws.heartbeats == []
        peers.ws.handshake_blackhole = False  # the next attempt (after the client's timeout) wins
    assert result, "systemctl start did not return"
    assert result[0][0] == 0, result
    assert peers.ws.heartbeats[0]["HeartbeatNumber"] == 0, "start returned before heartbeat 0"
    assert await machine.show("ActiveState") == "active"
    assert await machine.show("StatusText") == "running"


async def test_the_secret_comes_as_a_credential_and_stays_out_of_the_environment(
    machine: Machine, peers: Peers
) -> None:
    # The virtualenv runs on Debian's interpreter, which every host has.
    assert (await machine.ok("readlink", "/opt/fractal-hostd/venv/bin/python3")).strip() == (
        "/usr/bin/python3"
    )
    pid = await start(machine)
    environ = await machine.ok("cat", f"/proc/{pid}/environ")
    assert "CREDENTIALS_DIRECTORY=" in environ
    assert SECRET not in environ
    assert "FRACTAL_WEBSERVER_AUTH_SECRET" not in environ
    # The API took that secret: right one 200, wrong one 401.
    url = f"https://127.0.0.1:{machine.api_port}/status"
    async with httpx.AsyncClient(verify=False, timeout=10) as client:
        good = await client.get(url, headers={"Authorization": f"Bearer {SECRET}"})
        bad = await client.get(url, headers={"Authorization": "Bearer not-the-secret"})
    assert (good.status_code, bad.status_code) == (200, 401)


# --- stop and poweroff -----------------------------------------------------------------------


@pytest.mark.parametrize("blackhole", [False, True], ids=["webserver-answers", "blackholed"])
async def test_stop_exits_0_with_one_dying_heartbeat_within_timeout_stop_sec(
    machine: Machine, peers: Peers, blackhole: bool
) -> None:
    await start(machine)
    peers.ws.heartbeat_blackhole = blackhole
    began = time.monotonic()
    rc, out = await machine.exec("systemctl", "stop", UNIT, timeout=TIMEOUT_STOP_S + 30)
    took = time.monotonic() - began
    assert rc == 0, out
    assert took < TIMEOUT_STOP_S, f"stop took {took:.1f} s"
    assert len(dying(peers.ws)) == 1, peers.ws.heartbeats
    assert await machine.show("ExecMainStatus") == "0"
    assert await machine.show("Result") == "success"  # not "timeout": no SIGKILL was needed


# --- journald levels -------------------------------------------------------------------------

_LEVEL_PRIORITY = {"debug": "7", "info": "6", "warning": "4", "error": "3", "critical": "2"}


async def test_journal_priorities_match_the_service_lines_and_p_err_shows_only_errors(
    machine: Machine, peers: Peers
) -> None:
    since = await machine.now()
    await start(machine)
    await machine.ok("systemctl", "stop", UNIT)
    # A configuration error: printed before logging starts, and the start fails with exit 2.
    await machine.configure(peers.ws, peers.imds, FRACTAL_HEARTBEAT_INTERVAL="banana")
    rc, _ = await machine.exec("systemctl", "start", UNIT)
    assert rc != 0
    assert await machine.show("ExecMainStatus") == "2"

    service = [
        entry
        for entry in await machine.journal("-u", UNIT, after=since)
        if entry.get("SYSLOG_IDENTIFIER") == "fractal-hostd"
    ]
    json_lines = [e for e in service if str(e["MESSAGE"]).startswith("{")]
    assert any(json.loads(e["MESSAGE"])["msg"] == "ready" for e in json_lines)
    for entry in json_lines:  # journald stripped the prefix and kept its level
        assert entry["PRIORITY"] == _LEVEL_PRIORITY[json.loads(entry["MESSAGE"])["level"]], entry

    errors = [
        e
        for e in await machine.journal("-p", "err", "-u", UNIT, after=since)
        if e.get("SYSLOG_IDENTIFIER") == "fractal-hostd"
    ]
    assert [e["MESSAGE"] for e in errors] == [
        e["MESSAGE"] for e in service if int(e["PRIORITY"]) <= 3
    ]
    (config_error,) = errors
    assert "configuration error" in config_error["MESSAGE"]
    assert "FRACTAL_HEARTBEAT_INTERVAL" in config_error["MESSAGE"]
    # A configuration error is not retried (RestartPreventExitStatus=2).
    await trio.sleep(1)
    assert await machine.show("ActiveState") == "failed"


# --- watchdog --------------------------------------------------------------------------------


async def test_watchdog_pings_and_a_stopped_process_is_aborted_with_its_stacks_in_the_journal(
    machine: Machine, peers: Peers
) -> None:
    # WatchdogSec=30 as shipped makes this test wait 30 s; 6 s shows the same mechanism.
    dropin = "/run/systemd/system/fractal-hostd.service.d/watchdog.conf"
    await machine.ok(
        "sh",
        "-c",
        f"mkdir -p {Path(dropin).parent} && printf '[Service]\\nWatchdogSec=6\\n' > {dropin}",
    )
    await machine.ok("systemctl", "daemon-reload")
    try:
        since = await machine.now()
        pid = await start(machine)
        first = int(await machine.show("WatchdogTimestampMonotonic"))
        with trio.fail_after(20):
            while int(await machine.show("WatchdogTimestampMonotonic")) == first:
                await trio.sleep(0.5)
        await machine.ok("sh", "-c", f"kill -STOP {pid}")
        with trio.fail_after(60):  # WatchdogSec, then SIGABRT (+ SIGCONT) and the core dump
            while await machine.show("MainPID") == pid:
                await trio.sleep(0.5)
        text = "\n".join(str(e["MESSAGE"]) for e in await machine.journal("-u", UNIT, after=since))
        assert "Watchdog timeout" in text
        assert "Fatal Python error: Aborted" in text  # faulthandler
        assert re.search(r'File "/opt/fractal-hostd/venv/.*", line \d+', text), text[-3000:]
    finally:
        await machine.ok("rm", "-f", dropin)
        await machine.ok("systemctl", "daemon-reload")


# --- Docker going away -----------------------------------------------------------------------


async def test_restarting_or_stopping_and_starting_docker_takes_the_service_along(
    machine: Machine, peers: Peers
) -> None:
    pid = await start(machine)
    await machine.ok("systemctl", "restart", "docker.service")
    await machine.wait_for("ActiveState", "active", timeout=60)
    assert await machine.show("MainPID") != pid
    assert len(peers.ws.handshakes) == 2
    assert len(dying(peers.ws)) == 1
    # Docker stopped (a docker.io upgrade does that): the service stops with it (Requires=)...
    await machine.ok("systemctl", "stop", "docker.service")
    assert await machine.show("ActiveState") == "inactive"
    assert len(dying(peers.ws)) == 2
    # ...and starting Docker starts it again (WantedBy=docker.service).
    await machine.ok("systemctl", "start", "docker.service")
    await machine.wait_for("ActiveState", "active", timeout=60)
    assert len(peers.ws.handshakes) == 3


async def test_the_service_comes_back_by_itself_when_the_engine_returns(
    machine: Machine, peers: Peers
) -> None:
    since = await machine.now()
    pid = await start(machine)
    # The engine dies (not a clean stop of docker.service: Requires= would stop us too).
    await machine.ok("systemctl", "kill", "-s", "KILL", "docker.service")
    await machine.wait_for("ActiveState", "failed", unit="docker.service", timeout=30)
    # Unreachable beyond its budget (5 s here): the service ends with an error...
    with trio.fail_after(60):
        while await machine.show("MainPID") == pid:
            await trio.sleep(0.5)
    errors = "\n".join(
        str(e["MESSAGE"]) for e in await machine.journal("-p", "err", "-u", UNIT, after=since)
    )
    assert "Docker unreachable" in errors
    # ...and does not stay dead: systemd restarts it (Restart=on-failure) while the engine is
    # still away (that attempt fails on Docker again, and is retried)...
    with trio.fail_after(60):  # RestartSec=15
        while int(await machine.show("NRestarts")) < 1:
            await trio.sleep(0.5)
    # ...and once the engine is back it adopts and serves again.
    await machine.ok("systemctl", "start", "docker.service")
    await machine.wait_for("SubState", "running", timeout=120)
    assert peers.ws.heartbeats[-1]["HeartbeatNumber"] == 0  # a new stream after a new handshake


# --- hardening -------------------------------------------------------------------------------

# Each of these gives the unit its own mount namespace: FUSE mounts would be invisible to dockerd.
_NO_MOUNT_NAMESPACE = {
    "PrivateTmp": "no",
    "PrivateDevices": "no",
    "PrivateMounts": "no",
    "PrivateNetwork": "no",
    "PrivateUsers": "no",
    "ProtectSystem": "no",
    "ProtectHome": "no",
    "ProtectHostname": "no",
    "ProtectKernelTunables": "no",
    "ProtectKernelModules": "no",
    "ProtectKernelLogs": "no",
    "ProtectControlGroups": "no",
    "ProtectProc": "default",
    "ProcSubset": "all",
    "ReadWritePaths": "",
    "ReadOnlyPaths": "",
    "InaccessiblePaths": "",
    "TemporaryFileSystem": "",
    "BindPaths": "",
    "MountFlags": "",
}


async def test_security_exposure_is_at_most_6_without_a_mount_namespace(machine: Machine) -> None:
    out = await machine.ok("systemd-analyze", "security", "--no-pager", UNIT)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
    assert found is not None, out[-500:]
    assert float(found.group(1)) <= 6.0, out
    shown = await machine.ok("systemctl", "show", UNIT, "-p", ",".join(_NO_MOUNT_NAMESPACE))
    values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert {k: values.get(k, "") for k in _NO_MOUNT_NAMESPACE} == _NO_MOUNT_NAMESPACE


# --- FUSE under the hardening ----------------------------------------------------------------


async def test_a_fuse_mount_under_the_units_hardening_is_visible_outside_it(
    machine: Machine, peers: Peers
) -> None:
    if not Path("/dev/fuse").exists():
        pytest.skip("no /dev/fuse on this machine")
    unit = (await machine.ok("cat", f"/lib/systemd/system/{UNIT}")).splitlines()
    block = unit[unit.index(next(x for x in unit if x.startswith("# BEGIN HARDENING"))) :]
    block = block[: block.index("# END HARDENING")]
    probe = "\n".join(
        [
            "[Service]",
            "Type=simple",
            "ExecStart=/usr/bin/rclone mount --config /dev/null :local:/srv/fuse-src"
            " /fractal/cloudStorage/probe",
            *block,
        ]
    )
    await machine.ok(
        "sh", "-c",
        "mkdir -p /srv/fuse-src /fractal/cloudStorage/probe && echo hello > /srv/fuse-src/f"
        " && cat > /run/systemd/system/fhd-fuse-probe.service && systemctl daemon-reload",
        stdin=probe.encode(),
    )  # fmt: skip
    try:
        await machine.ok("systemctl", "start", "fhd-fuse-probe.service")
        with trio.fail_after(30):
            while (await machine.exec("cat", "/fractal/cloudStorage/probe/f"))[1] != "hello\n":
                await trio.sleep(0.3)
        mounts = await machine.ok("cat", "/proc/1/mountinfo")
        assert "/fractal/cloudStorage/probe" in mounts  # in PID 1's namespace, not a private one
    finally:
        await machine.exec("systemctl", "stop", "fhd-fuse-probe.service")


# --- package life cycle ----------------------------------------------------------------------


def _repack_newer(deb: Path, into: Path) -> Path:
    """The same package with a higher version: what an upgrade installs."""
    tree = into / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=120)
    control = tree / "DEBIAN/control"
    text = control.read_text()
    version = re.search(r"^Version: (.+)$", text, re.M)
    assert version is not None
    newer = version.group(1) + ".1"
    control.write_text(text.replace(version.group(0), f"Version: {newer}"))
    out = into / f"fractal-hostd_{newer}_upgrade.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


async def test_upgrade_keeps_the_ttys_and_remove_stops_the_service(
    machine: Machine, peers: Peers, deb: Path, tmp_path: Path, docker_socket: Path
) -> None:
    pid = await start(machine)
    name = f"fhd-systemd-managed-{uuid.uuid4().hex[:8]}"
    run = await trio.run_process(
        ["docker", "run", "-d", "--name", name, "--label", LABEL, "-p", "127.0.0.1::32262",
         TEST_IMAGE, "sleep", "600"],
        capture_stdout=True,
    )  # fmt: skip
    cid = run.stdout.decode().strip()
    try:
        tty_file = f"/fractal/containerResourceMappings/{cid}/tty"
        with trio.fail_after(30):
            while (await machine.exec("cat", tty_file))[0] != 0:
                await trio.sleep(0.3)
        tty = await machine.ok("cat", tty_file)

        newer = await trio.to_thread.run_sync(_repack_newer, deb, tmp_path)
        await machine.ok("mkdir", "-p", "/tmp/upgrade")
        await trio.run_process(["docker", "cp", str(newer), f"{machine.name}:/tmp/upgrade/"])
        await machine.ok(
            "apt-get", "install", "-y", "-q", f"/tmp/upgrade/{newer.name}", timeout=300
        )
        assert await machine.show("ActiveState") == "active"
        assert await machine.show("MainPID") != pid  # restarted onto the new files
        assert await machine.ok("cat", tty_file) == tty  # adopted with its TTY
        assert len(peers.ws.handshakes) == 2
        assert len(dying(peers.ws)) == 1

        await machine.ok("apt-get", "remove", "-y", "-q", "fractal-hostd", timeout=300)
        assert await machine.show("ActiveState") == "inactive"
        assert len(dying(peers.ws)) == 2
        rc, _ = await machine.exec("ls", "/opt/fractal-hostd/venv")
        assert rc != 0, "files left under /opt after remove"
        await machine.ok("apt-get", "purge", "-y", "-q", "fractal-hostd", timeout=300)
        assert (await machine.exec("ls", "/etc/fractal-hostd"))[0] != 0
    finally:
        await trio.run_process(["docker", "rm", "-f", name], check=False, capture_stdout=True)


async def test_poweroff_sends_the_dying_heartbeat_before_the_machine_is_gone(
    systemd_image: str, deb: Path, docker_socket: Path
) -> None:
    booted = await trio.to_thread.run_sync(boot, systemd_image, deb, docker_socket)
    try:
        async with running_fake_webserver() as ws, running_fake_imds() as imds:
            await booted.configure(ws, imds)
            await start(booted)
            await booted.exec("systemctl", "poweroff")  # may lose its exec session: any rc
            with trio.fail_after(90):
                await trio.run_process(["docker", "wait", booted.name], capture_stdout=True)
            assert len(dying(ws)) == 1, ws.heartbeats
            assert ws.heartbeats[-1]["IsDyingHeartbeat"]
    finally:
        await trio.to_thread.run_sync(remove, booted)
