"""A private dockerd for the chaos driver: its own socket, data-root, exec-root, pid file and
bridge, so it never touches the host's engine on /var/run/docker.sock.

Its bridge is one it creates (`chaosbr<N>`, 10.213.N.1/24, N from the driver's pid) and dockerd runs
with `--iptables=false --ip-masq=false`: no iptables rule of the host's engine is changed,
and published ports are served by docker-proxy. The test image is imported with
`docker import` of a busybox tarball, like scripts/build-test-image.sh (no registry here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from tests.fakes.docker_model import BUSYBOX

APPLETS = ("sh", "sleep", "echo", "cat", "ls", "mkdir", "touch", "rm", "env")


class PrivateDockerd:
    def __init__(self, base: Path, *, index: int | None = None) -> None:
        # Runs side by side (a long run and the test suite) need bridges of their own.
        index = 20 + os.getpid() % 200 if index is None else index
        self.base = base
        self.socket_path = str(base / "docker.sock")
        self.bridge = f"chaosbr{index}"
        self.subnet = f"10.213.{index}.1/24"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def host(self) -> str:
        return f"unix://{self.socket_path}"

    def argv(self) -> list[str]:
        return [
            "dockerd",
            f"--host={self.host}",
            f"--data-root={self.base / 'data'}",
            f"--exec-root={self.base / 'exec'}",
            f"--pidfile={self.base / 'dockerd.pid'}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--userland-proxy=true",
            "--storage-driver=overlay2",
        ]

    def _make_bridge(self) -> None:
        if subprocess.run(["ip", "link", "show", self.bridge], capture_output=True).returncode:
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", self.subnet, "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)

    def start(self, timeout: float = 60.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self._make_bridge()
        log = (self.base / "dockerd.log").open("ab")
        self.process = subprocess.Popen(
            self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.base / "dockerd.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"private dockerd did not start:\n{tail}")
            time.sleep(0.1)

    def answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(self.socket_path)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return b" 200 " in sock.recv(64)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL dockerd and the containerd it started (the container shims live on).

        Measured: a containerd orphaned by its dockerd is not reliably picked up again by
        the next dockerd ("timeout waiting for containerd to start"), so it goes too: the
        next dockerd starts a fresh one, which reattaches to the running shims."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._kill_leftover_containerd(only_daemon=True)
        (self.base / "exec" / "containerd" / "containerd.pid").unlink(missing_ok=True)
        # PIDs wrap quickly on a busy host: a stale pid file naming a live process would
        # make the next dockerd refuse to start.
        (self.base / "dockerd.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def docker(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(
            ["docker", "-H", self.host, *args],
            input=stdin,
            capture_output=True,
            check=True,
            timeout=120,
        )
        return result.stdout.decode()

    def import_test_image(self, busybox: str = "/bin/busybox") -> None:
        with tempfile.TemporaryDirectory() as root_dir:
            root = Path(root_dir)
            (root / "bin").mkdir()
            (root / "tmp").mkdir(mode=0o1777)
            shutil.copy(busybox, root / "bin" / "busybox")
            for applet in APPLETS:
                (root / "bin" / applet).symlink_to("busybox")
            tar_path = root.parent / f"{root.name}.tar"
            with tarfile.open(tar_path, "w") as tar:
                tar.add(root, arcname=".", filter=_as_root)
            try:
                self.docker("import", "--message", "chaos test image", str(tar_path), BUSYBOX)
            finally:
                tar_path.unlink()

    def clean_up(self) -> None:
        """Remove every container, stop dockerd and its containerd, drop the bridge and dirs."""
        with contextlib.suppress(Exception):
            ids = self.docker("ps", "-aq").split()
            if ids:
                self.docker("rm", "-f", *ids)
        self.stop()
        self._kill_leftover_containerd()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        # dockerd leaves its data-root bind-mounted on itself (and overlay mounts after a kill).
        for point in sorted(_mounts_under(self.base), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        if not _mounts_under(self.base):
            shutil.rmtree(self.base, ignore_errors=True)

    def _kill_leftover_containerd(self, *, only_daemon: bool = False) -> None:
        # Processes under our exec-root: containerd itself and (unless only_daemon) shims.
        marker = str(self.base / "exec")
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if not any(marker in arg.decode(errors="replace") for arg in argv):
                    continue
                if only_daemon and Path(argv[0].decode()).name != "containerd":
                    continue
                os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(int(pid), os.WNOHANG)


def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base) + "/"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = [line.split(" ")[4] for line in lines]
    return [p for p in points if p.startswith(prefix) or p == str(base)]
