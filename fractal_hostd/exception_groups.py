"""Exception groups, taken apart: what a nursery raised, one leaf at a time."""

from __future__ import annotations

from collections.abc import Iterator


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions inside `error`'s (nested) groups, in order; `error` itself if no group."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error
