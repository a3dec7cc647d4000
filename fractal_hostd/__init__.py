"""fractal_hostd: the host agent of Fractal cloud GPU hosts."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: importlib.metadata costs tens of milliseconds, and the entry point imports this
    # package before it can install its signal handlers (early_signals).
    if name != "__version__":
        raise AttributeError(f"module 'fractal_hostd' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("fractal-hostd")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
