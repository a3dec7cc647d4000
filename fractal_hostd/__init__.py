"""fractal_hostd: the host agent of Fractal cloud GPU hosts."""

# The same as pyproject.toml's `version` (tests/test_version.py checks both and the installed
# metadata). Not read with importlib.metadata at start-up: importing it (zipfile, email, csv)
# and scanning sys.path for the distribution cost 30-120 ms of every start, before READY.
__version__ = "0.1.0"
