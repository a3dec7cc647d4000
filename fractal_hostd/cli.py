"""`fractal-hostd run | check | status`: the entry point systemd and operators use.

Flags of `run` mirror the environment variables of contract §1 one to one (`--heartbeat-interval`
is FRACTAL_HEARTBEAT_INTERVAL); a flag wins over the variable. A configuration error prints one
line and exits 2 before anything starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fractal_hostd import __version__
from fractal_hostd.config import API_URL_FILE, Config, ConfigError
from fractal_hostd.logs import stderr_is_journal

EXIT_CONFIG_ERROR = 2

# (flag, variable, help). Secrets have no flag: a command line is world-readable in /proc.
_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--app-env", "APP_ENV", "localdev, dev, staging or prod"),
    ("--root", "FRACTAL_ROOT", "root of resource mappings and cloud storage"),
    ("--private-dir", "FRACTAL_PRIVATE_DIR", "directory for the TLS key and secrets"),
    ("--docker-host", "DOCKER_HOST", "unix:///path of the Docker socket"),
    ("--api-bind", "FRACTAL_API_BIND", "HOST:PORT of the HTTPS API (port 0: any free port)"),
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fractal-hostd", description="Host agent of Fractal cloud GPU hosts."
    )
    parser.add_argument("--version", action="version", version=f"fractal-hostd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the service (what systemd starts)")
    check = commands.add_parser("check", help="validate configuration and prerequisites")
    for sub in (run, check):
        for flag, variable, text in _FLAGS:
            sub.add_argument(flag, dest=variable, metavar="VALUE", help=f"{text} [{variable}]")
    status = commands.add_parser("status", help="show the running service's state")
    status.add_argument("--api-bind", dest="FRACTAL_API_BIND", metavar="VALUE")
    status.add_argument("--private-dir", dest="FRACTAL_PRIVATE_DIR", metavar="VALUE")
    status.add_argument("--app-env", dest="APP_ENV", metavar="VALUE")
    return parser


def _load_config(args: argparse.Namespace) -> Config:
    overrides = {
        name: value for name, value in vars(args).items() if name.isupper() and value is not None
    }
    return Config.from_env(os.environ, overrides)


def main(argv: Sequence[str] | None = None) -> int:
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
        from fractal_hostd.supervisor import run_service

        return run_service(config)
    if args.command == "check":
        from fractal_hostd.checks import check_main

        return check_main(config)
    from fractal_hostd.status_cli import status_main

    url, secret = _local_api(config)
    return status_main(url=url, secret=secret)


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
