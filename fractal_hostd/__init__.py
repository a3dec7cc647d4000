"""fractal_hostd: the host agent of Fractal cloud GPU hosts."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fractal-hostd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
