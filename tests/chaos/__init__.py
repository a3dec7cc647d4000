"""The chaos suite: a seeded driver that runs the real service against faults (issue 11).

`python -m tests.chaos --help` (or `make chaos`); docs/chaos.md explains what it does.
"""
