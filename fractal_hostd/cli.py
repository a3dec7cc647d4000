"""`fractal-hostd run | check | status | drain`: the entry point systemd and operators use.

Flags of `run` mirror the environment variables of contract §1 one to one (`--heartbeat-interval`
is FRACTAL_HEARTBEAT_INTERVAL); a flag wins over the variable. A configuration error prints one
line and exits 2 before anything starts.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence

import fractal_hostd
from fractal_hostd.config import API_URL_FILE, EXIT_CONFIG_ERROR, Config, ConfigError
from fractal_hostd.process import early_signals
from fractal_hostd.process.logs import stderr_is_journal

# (flag, variable, help). Secrets have no flag: a command line is world-readable in /proc.
_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--app-env", "APP_ENV", "localdev, dev, staging or prod"),
    ("--root", "FRACTAL_ROOT", "root of resource mappings and cloud storage"),
    ("--private-dir", "FRACTAL_PRIVATE_DIR", "directory for the TLS key and secrets"),
    ("--docker-host", "DOCKER_HOST", "unix:///path of the Docker socket"),
    ("--api-bind", "FRACTAL_API_BIND", "HOST:PORT of the HTTPS API (port 0: any free port)"),
    (
        "--api-max-connections",
        "FRACTAL_API_MAX_CONNECTIONS",
        "API connections open at once; more are refused",
    ),
    ("--webserver-url", "FRACTAL_WEBSERVER_URL", "base URL of the webserver ('' disables)"),
    ("--imds-url", "FRACTAL_IMDS_URL", "EC2 instance metadata URL, or 'off'"),
    ("--use-prod-sentry", "USE_PROD_SENTRY", "enable Sentry outside staging/prod"),
    ("--heartbeat-interval", "FRACTAL_HEARTBEAT_INTERVAL", "seconds between heartbeats"),
    ("--heartbeat-jitter", "FRACTAL_HEARTBEAT_JITTER", "± seconds of jitter per heartbeat"),
    ("--spot-poll-interval", "FRACTAL_SPOT_POLL_INTERVAL", "seconds between spot polls"),
    (
        "--docker-unreachable-budget",
        "FRACTAL_DOCKER_UNREACHABLE_BUDGET",
        "seconds Docker may stay unreachable",
    ),
    ("--handshake-timeout", "FRACTAL_HANDSHAKE_TIMEOUT", "seconds the handshake may retry"),
    ("--container-wait", "FRACTAL_CONTAINER_WAIT", "seconds to wait for an unknown host port"),
    ("--start-ecs-agent", "FRACTAL_START_ECS_AGENT", "start the ECS agent (boolean)"),
    ("--ecs-agent-image", "FRACTAL_ECS_AGENT_IMAGE", "image of the ECS agent container"),
    (
        "--shutdown-report-timeout",
        "FRACTAL_SHUTDOWN_REPORT_TIMEOUT",
        "seconds the shutdown report may take",
    ),
    ("--log-format", "FRACTAL_LOG_FORMAT", "console or json"),
    ("--log-level", "FRACTAL_LOG_LEVEL", "debug, info, warning, error or critical"),
)


# What each variable defaults to, for --help (config.py is the authority; a test keeps the
# two in step for every value that does not depend on APP_ENV).
_DEFAULTS: dict[str, str] = {
    "APP_ENV": "localdev",
    "FRACTAL_ROOT": "/fractal",
    "FRACTAL_PRIVATE_DIR": "/fractalprivate",
    "DOCKER_HOST": "unix:///var/run/docker.sock",
    "FRACTAL_API_BIND": "0.0.0.0:4678; 127.0.0.1:4678 in localdev",
    "FRACTAL_WEBSERVER_URL": "per APP_ENV; '' in localdev",
    "FRACTAL_IMDS_URL": "http://169.254.169.254; off in localdev",
    "USE_PROD_SENTRY": "off",
    "FRACTAL_HEARTBEAT_INTERVAL": "60",
    "FRACTAL_HEARTBEAT_JITTER": "5",
    "FRACTAL_SPOT_POLL_INTERVAL": "5",
    "FRACTAL_DOCKER_UNREACHABLE_BUDGET": "120",
    "FRACTAL_HANDSHAKE_TIMEOUT": "60",
    "FRACTAL_CONTAINER_WAIT": "10",
    "FRACTAL_START_ECS_AGENT": "on in staging/prod, off otherwise",
    "FRACTAL_ECS_AGENT_IMAGE": "amazon/amazon-ecs-agent:latest",
    "FRACTAL_SHUTDOWN_REPORT_TIMEOUT": "5",
    "FRACTAL_LOG_FORMAT": "console in localdev, json otherwise",
    "FRACTAL_LOG_LEVEL": "info",
    "FRACTAL_API_MAX_CONNECTIONS": "256",
}
# `status` and `drain` only need to find the running service's API and secret.
_LOCATOR_FLAGS = ("--app-env", "--private-dir", "--api-bind")


def _flag_help(text: str, variable: str) -> str:
    return f"{text} (default: {_DEFAULTS[variable]}) [env {variable}]"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fractal-hostd", description="Host agent of Fractal cloud GPU hosts."
    )
    parser.add_argument(
        "--version", action="version", version=f"fractal-hostd {fractal_hostd.__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the service (what systemd starts)")
    check = commands.add_parser("check", help="validate configuration and prerequisites")
    for sub in (run, check):
        for flag, variable, text in _FLAGS:
            sub.add_argument(flag, dest=variable, metavar="VALUE", help=_flag_help(text, variable))
    status = commands.add_parser("status", help="show the running service's state")
    drain = commands.add_parser(
        "drain", help="make the host drain as on a spot notice (POST /drain; idempotent)"
    )
    drain.add_argument(
        "--reason", metavar="TEXT", help="why, shown by /status (default: none given)"
    )
    for sub in (status, drain):
        for flag, variable, text in _FLAGS:
            if flag in _LOCATOR_FLAGS:
                sub.add_argument(
                    flag, dest=variable, metavar="VALUE", help=_flag_help(text, variable)
                )
    return parser


def _load_config(args: argparse.Namespace) -> Config:
    overrides = {
        name: value for name, value in vars(args).items() if name.isupper() and value is not None
    }
    return Config.from_env(os.environ, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["run"]:
        # The console script's first statement (`python -m` installs them earlier still):
        # a signal from here on is recorded and handled once trio listens (early_signals).
        early_signals.install()
        pause_collector_for_imports()
    args = _parser().parse_args(argv)
    try:
        config = _load_config(args)
    except ConfigError as exc:
        # "<3>": journald's error level when stderr is the journal (`journalctl -p err`).
        level = "<3>" if stderr_is_journal() else ""
        print(f"{level}fractal-hostd: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    # Imported here so `--help` and config errors stay fast and free of heavy imports.
    if args.command == "run":
        return _run(config)
    if args.command == "check":
        from fractal_hostd.checks import check_main

        return check_main(config)
    from fractal_hostd.status_cli import drain_main, status_main

    url, secret = _local_api(config)
    if args.command == "drain":
        return drain_main(url=url, secret=secret, reason=args.reason)
    return status_main(url=url, secret=secret)


def _run(config: Config) -> int:
    """The service, once this process holds the single-instance lock (contract §7a).

    The lock comes before everything with a side effect (Sentry, handshake, files, mounts, the
    API port): a refused instance sends nothing and touches nothing of the running one.
    """
    from fractal_hostd.process.instance_lock import InstanceLocked, LockUnavailable, acquire

    try:
        # Never released: the descriptors close when the process ends, after the last
        # cleanup, so no second instance can start while this one is still on its way out.
        acquire(config.root, config.private_dir)
    except (InstanceLocked, LockUnavailable) as exc:
        print(f"fractal-hostd: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from fractal_hostd.supervisor import run_service

    resume_collector_after_imports()
    try:
        return run_service(config)
    finally:
        early_signals.ignore()  # the report is done: a late signal must not change the exit


def pause_collector_for_imports() -> None:
    """No cyclic garbage collection while `run` imports its ~1,000 modules.

    Imports allocate ~75,000 long-lived objects, and the collector ran ~180 times over them,
    re-examining the survivors each time: 50-110 ms of a ~450 ms import phase (measured with
    gc.callbacks on a loaded machine). See `resume_collector_after_imports` for the end.
    """
    gc.disable()


def resume_collector_after_imports() -> None:
    """The collector back on, with what the imports made frozen out of its passes.

    Frozen, not collected first: the imports leave ~2,300 garbage objects (~0.6 MB, mostly
    functions and closures of classes built and dropped at import), and a full pass over the
    75,000 objects to free them costs as much CPU as the collections it replaces. The
    supervisor freezes the rest of start-up's objects the same way once it is done.
    """
    if gc.isenabled():
        return  # not paused (`main` called with arguments: tests, other entry points)
    gc.freeze()
    gc.enable()


def _local_api(config: Config) -> tuple[str, str]:
    """The running service's API URL and secret, as this host's operator can find them."""
    url_file = config.private_dir / API_URL_FILE
    if url_file.exists():
        url = url_file.read_text().strip()
    else:
        host = "127.0.0.1" if config.api_host in ("0.0.0.0", "::") else config.api_host
        url = f"https://{f'[{host}]' if ':' in host else host}:{config.api_port}"
    if config.webserver_auth_secret is not None:
        return url, config.webserver_auth_secret.reveal()
    try:
        return url, config.auth_secret_file.read_text().strip()
    except OSError:
        return url, ""


if __name__ == "__main__":
    sys.exit(main())
