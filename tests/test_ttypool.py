"""TtyPool: range 10-63, lowest free first, no TTY held twice."""

from __future__ import annotations

from fractal_hostd.containers.ttypool import FIRST_TTY, LAST_TTY, TTY_COUNT, TtyPool


def test_range_is_10_to_63() -> None:
    assert (FIRST_TTY, LAST_TTY, TTY_COUNT) == (10, 63, 54)
    pool = TtyPool()
    assigned = [pool.assign() for _ in range(TTY_COUNT)]
    assert assigned == list(range(10, 64))
    assert pool.free_count == 0


def test_exhaustion_returns_none_and_release_makes_room() -> None:
    pool = TtyPool()
    for _ in range(TTY_COUNT):
        pool.assign()
    assert pool.assign() is None
    assert pool.assign() is None
    pool.release(30)
    assert pool.assign() == 30
    assert pool.assign() is None


def test_lowest_free_is_assigned() -> None:
    pool = TtyPool()
    for _ in range(5):
        pool.assign()
    pool.release(12)
    pool.release(11)
    assert pool.assign() == 11
    assert pool.assign() == 12
    assert pool.assign() == 15


def test_claim_refuses_held_and_out_of_range() -> None:
    pool = TtyPool()
    assert pool.claim(40)
    assert not pool.claim(40)
    assert not pool.claim(9)
    assert not pool.claim(64)
    assert not pool.claim(True)  # bool is an int to Python, not a TTY to us
    assert pool.held == frozenset({40})
    assert pool.assign() == 10


def test_claimed_tty_is_skipped_by_assign() -> None:
    pool = TtyPool()
    assert pool.claim(10)
    assert pool.assign() == 11


def test_release_is_idempotent() -> None:
    pool = TtyPool()
    tty = pool.assign()
    assert tty is not None
    pool.release(tty)
    pool.release(tty)
    pool.release(99)
    assert pool.free_count == TTY_COUNT
