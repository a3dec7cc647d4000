"""The package's version is written twice; they must agree."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import fractal_hostd


def test_the_package_version_is_the_projects_and_the_installed_one() -> None:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert fractal_hostd.__version__ == declared
    assert importlib.metadata.version("fractal-hostd") == declared
