"""Shared fixtures. Test rules for every module: loopback and unix sockets only, port 0,
`autojump_clock` when a test sleeps, an absolute `trio.fail_after` around I/O, no wall-clock
assertions (the CI machine has 2 shared cores)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from hypothesis import settings

# CI must be deterministic: the same examples on every run (and no example database to carry
# between clean clones), and no per-example deadline, which a loaded 2-core machine misses
# (timing is measured by `make bench`, never asserted). Locally, hypothesis keeps exploring
# new examples each run.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

REAL_DOCKER_SOCKET = Path(os.environ.get("FHD_TEST_DOCKER_SOCKET", "/var/run/docker.sock"))
TEST_IMAGE = "fractal-hostd-test-busybox:latest"


def _docker_answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


@pytest.fixture(scope="session")
def docker_socket() -> Path:
    """The real Docker engine's socket; skips (with the reason) when no engine answers."""
    if not _docker_answers(REAL_DOCKER_SOCKET):
        pytest.skip(f"no Docker engine answers on {REAL_DOCKER_SOCKET} (CI starts one: .ci/run)")
    return REAL_DOCKER_SOCKET
