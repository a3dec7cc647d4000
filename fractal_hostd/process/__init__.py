"""The process's plumbing: signals, logs, Sentry, systemd, child processes, private files.

Imports nothing above config, hoststate and safefs (docs/architecture.md, Floors); empty so
that importing early_signals first thing costs nothing else.
"""
