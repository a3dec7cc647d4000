"""ContainerRegistry: lookups and the host-port waiter the API uses."""

from __future__ import annotations

import trio
import trio.testing

from fractal_hostd.containers.registry import ContainerRecord, ContainerRegistry
from tests.containers_fixtures import cid


def record(n: int, port: int, tty: int | None = None) -> ContainerRecord:
    return ContainerRecord(id=cid(n), host_port=port, tty=tty)


def test_lookups() -> None:
    reg = ContainerRegistry()
    a, b = record(1, 40001, 10), record(2, 40002, 11)
    reg.add(a)
    reg.add(b)
    assert reg.get(cid(1)) is a
    assert reg.by_host_port(40002) is b
    assert reg.by_host_port(40003) is None
    assert reg.records() == [a, b]
    assert reg.remove(cid(1)) is a
    assert reg.remove(cid(1)) is None
    assert reg.get(cid(1)) is None
    assert reg.by_host_port(40001) is None
    assert reg.records() == [b]


def test_free_ttys_follows_the_pool() -> None:
    reg = ContainerRegistry()
    assert reg.free_ttys == 54
    reg.tty_pool.assign()
    assert reg.free_ttys == 53


def test_newer_container_takes_a_port_and_older_removal_keeps_it() -> None:
    reg = ContainerRegistry()
    old, new = record(1, 40001), record(2, 40001)
    reg.add(old)
    reg.add(new)
    assert reg.by_host_port(40001) is new
    reg.remove(old.id)
    assert reg.by_host_port(40001) is new


def test_move_port() -> None:
    reg = ContainerRegistry()
    a = record(1, 40001)
    reg.add(a)
    reg.move_port(a, 40005)
    assert a.host_port == 40005
    assert reg.by_host_port(40001) is None
    assert reg.by_host_port(40005) is a


async def test_wait_for_host_port_returns_at_once_when_known() -> None:
    reg = ContainerRegistry()
    a = record(1, 40001)
    reg.add(a)
    with trio.fail_after(1):
        assert await reg.wait_for_host_port(40001) is a


async def test_wait_for_host_port_wakes_on_the_right_add(autojump_clock: trio.abc.Clock) -> None:
    reg = ContainerRegistry()
    got: list[ContainerRecord] = []

    async def waiter() -> None:
        got.append(await reg.wait_for_host_port(40002))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1)
        reg.add(record(1, 40001))
        await trio.sleep(1)
        assert got == []
        b = record(2, 40002)
        reg.add(b)
    assert got == [b]
    assert trio.current_time() == 2


async def test_caller_bounds_the_wait(autojump_clock: trio.abc.Clock) -> None:
    reg = ContainerRegistry()
    with trio.move_on_after(10) as scope:
        await reg.wait_for_host_port(40001)
    assert scope.cancelled_caught
    assert trio.current_time() == 10
