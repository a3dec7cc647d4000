"""The TTY numbers handed to containers (contract §3).

TTYs 0-9 belong to the host and the kernel offers up to 63, so containers get 10-63. The
lowest free number is assigned, which keeps numbers small and predictable for operators.
No number is ever held twice: that is the one invariant this class exists for.
"""

from __future__ import annotations

FIRST_TTY = 10
LAST_TTY = 63
TTY_COUNT = LAST_TTY - FIRST_TTY + 1


class TtyPool:
    def __init__(self) -> None:
        self._held: set[int] = set()

    def assign(self) -> int | None:
        """Hold and return the lowest free TTY; None when all are held (caller reports it)."""
        for tty in range(FIRST_TTY, LAST_TTY + 1):
            if tty not in self._held:
                self._held.add(tty)
                return tty
        return None

    def claim(self, tty: int) -> bool:
        """Hold a specific TTY (adoption after a restart); False when out of range or held."""
        if not is_valid_tty(tty) or tty in self._held:
            return False
        self._held.add(tty)
        return True

    def release(self, tty: int) -> None:
        """Free a TTY; freeing one that is not held is harmless (die events can repeat)."""
        self._held.discard(tty)

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    @property
    def free_count(self) -> int:
        return TTY_COUNT - len(self._held)


def is_valid_tty(tty: object) -> bool:
    return isinstance(tty, int) and not isinstance(tty, bool) and FIRST_TTY <= tty <= LAST_TTY
