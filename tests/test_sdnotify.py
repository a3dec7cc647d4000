"""systemd notify protocol against a real AF_UNIX datagram socket bound in a tmp dir.

Rules: unix sockets in tmp_path only, autojump_clock for the watchdog schedule, fail_after
around every test that waits.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fractal_hostd.process import sdnotify


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """What systemd listens on: NOTIFY_SOCKET points at it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield sock


def received(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_ready_stopping_status_reach_the_socket(receiver: socket.socket) -> None:
    assert sdnotify.ready()
    assert sdnotify.status("serving\non 4678")
    assert sdnotify.stopping()
    assert received(receiver) == ["READY=1", "STATUS=serving on 4678", "STOPPING=1"]


def test_stopping_pings_the_watchdog_once_more(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.stopping()
    assert received(receiver) == ["STOPPING=1\nWATCHDOG=1"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"fhtest-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready()
        assert sock.recv(64) == b"READY=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not sdnotify.ready()
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # a kind we do not speak
    assert not sdnotify.ready()


def test_gone_socket_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not sdnotify.ready()
    assert "systemd notification failed" in caplog.text


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    for bad in ("0", "", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sdnotify.watchdog_interval() is None


async def test_watchdog_pings_every_half_period(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.abc.Clock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(sdnotify.run_watchdog)
            start = trio.current_time()
            await trio.sleep(46)  # pings at 0, 15, 30, 45
            nursery.cancel_scope.cancel()
    assert trio.current_time() - start == 46
    assert received(receiver) == ["WATCHDOG=1"] * 4


async def test_watchdog_without_watchdog_sleeps_quietly(
    receiver: socket.socket, autojump_clock: trio.abc.Clock
) -> None:
    with trio.fail_after(10_000):
        async with trio.open_nursery() as nursery:
            await nursery.start(sdnotify.run_watchdog)
            await trio.sleep(3600)
            nursery.cancel_scope.cancel()
    assert received(receiver) == []
