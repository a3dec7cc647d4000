"""The service's configuration: one immutable object parsed from the environment (contract §1).

Parsing is pure: `Config.from_env(env, overrides)` takes mappings and reads only the secret
files it is pointed at, so every rule is testable without touching the process environment.
Every error is a `ConfigError` whose message names the variable, the bad value and what is
allowed; the CLI prints that one line and exits 2.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# The name of the systemd credential (LoadCredential=) holding the API's shared secret.
AUTH_SECRET_CREDENTIAL = "webserver_auth_secret"  # noqa: S105 (a name, not a secret)
SENTRY_DSN_CREDENTIAL = "sentry_dsn"
# Written into the private directory at start-up so `fractal-hostd status` finds a port-0 API.
API_URL_FILE = "api_url"
EXIT_CONFIG_ERROR = 2  # contract §7: a configuration error, found before start-up


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message is one line for the operator."""


class AppEnv(enum.StrEnum):
    LOCALDEV = "localdev"
    DEV = "dev"
    STAGING = "staging"
    PROD = "prod"


_ENV_ALIASES = {
    "localdev": AppEnv.LOCALDEV,
    "local": AppEnv.LOCALDEV,
    "dev": AppEnv.DEV,
    "development": AppEnv.DEV,
    "staging": AppEnv.STAGING,
    "prod": AppEnv.PROD,
    "production": AppEnv.PROD,
}

# Webservers of the deployed environments. Localdev has none: no handshake, no heartbeats.
DEFAULT_WEBSERVER_URLS = {
    AppEnv.LOCALDEV: "",
    AppEnv.DEV: "https://dev-server.fractal.co",
    AppEnv.STAGING: "https://staging-server.fractal.co",
    AppEnv.PROD: "https://prod-server.fractal.co",
}

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("console", "json")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Config:
    app_env: AppEnv = AppEnv.LOCALDEV
    root: Path = Path("/fractal")
    private_dir: Path = Path("/fractalprivate")
    docker_socket: Path = Path("/var/run/docker.sock")
    api_host: str = "127.0.0.1"
    api_port: int = 4678
    api_max_connections: int = 256
    webserver_url: str = ""
    # None in localdev until start-up generates one (see `auth_secret_file`).
    webserver_auth_secret: Secret | None = field(default=None)
    imds_url: str | None = None  # None: FRACTAL_IMDS_URL=off, static local metadata
    sentry_dsn: Secret | None = None
    sentry_enabled: bool = False
    heartbeat_interval: float = 60.0
    heartbeat_jitter: float = 5.0
    spot_poll_interval: float = 5.0
    docker_unreachable_budget: float = 120.0
    container_wait: float = 10.0
    handshake_timeout: float = 60.0
    start_ecs_agent: bool = False
    ecs_agent_image: str = "amazon/amazon-ecs-agent:latest"
    shutdown_report_timeout: float = 5.0
    log_format: str = "console"
    log_level: str = "info"

    @property
    def mappings_dir(self) -> Path:
        return self.root / "containerResourceMappings"

    @property
    def cloud_storage_dir(self) -> Path:
        return self.root / "cloudStorage"

    @property
    def auth_secret_file(self) -> Path:
        """Where localdev keeps its generated API secret (and `fractal-hostd status` looks)."""
        return self.private_dir / "auth_secret"

    @property
    def api_bind(self) -> str:
        host = f"[{self.api_host}]" if ":" in self.api_host else self.api_host
        return f"{host}:{self.api_port}"

    @property
    def is_localdev(self) -> bool:
        return self.app_env is AppEnv.LOCALDEV

    @classmethod
    def from_env(cls, env: Mapping[str, str], overrides: Mapping[str, str] | None = None) -> Config:
        """Parse contract §1 from `env`; `overrides` (CLI flags, by variable name) win."""
        merged = {k: v for k, v in env.items()}
        merged.update(overrides or {})
        return _Parser(merged).parse()


class _Parser:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def parse(self) -> Config:
        app_env = self.app_env()
        deployed = app_env is not AppEnv.LOCALDEV
        api_host, api_port = self.bind(
            "FRACTAL_API_BIND", "0.0.0.0:4678" if deployed else "127.0.0.1:4678"
        )
        secret = self.secret("FRACTAL_WEBSERVER_AUTH_SECRET", AUTH_SECRET_CREDENTIAL)
        if deployed and secret is None:
            raise ConfigError(
                "FRACTAL_WEBSERVER_AUTH_SECRET is not set: required outside localdev "
                "(set it, FRACTAL_WEBSERVER_AUTH_SECRET_FILE, or the systemd credential "
                f"{AUTH_SECRET_CREDENTIAL!r})"
            )
        sentry_dsn = self.secret("SENTRY_DSN", SENTRY_DSN_CREDENTIAL)
        use_prod_sentry = self.boolean("USE_PROD_SENTRY", False)
        sentry_wanted = app_env in (AppEnv.STAGING, AppEnv.PROD) or use_prod_sentry
        if sentry_dsn is not None:
            self.check_dsn(sentry_dsn)
        root = self.path("FRACTAL_ROOT", "/fractal")
        private_dir = self.path("FRACTAL_PRIVATE_DIR", "/fractalprivate")
        check_private_dir(private_dir, root)
        config = Config(
            app_env=app_env,
            root=root,
            private_dir=private_dir,
            docker_socket=self.docker_socket(),
            api_host=api_host,
            api_port=api_port,
            api_max_connections=self.count("FRACTAL_API_MAX_CONNECTIONS", 256),
            webserver_url=self.url("FRACTAL_WEBSERVER_URL", DEFAULT_WEBSERVER_URLS[app_env]),
            webserver_auth_secret=secret,
            imds_url=self.imds_url("off" if not deployed else "http://169.254.169.254"),
            sentry_dsn=sentry_dsn,
            sentry_enabled=sentry_wanted and sentry_dsn is not None,
            heartbeat_interval=self.duration("FRACTAL_HEARTBEAT_INTERVAL", 60.0, positive=True),
            heartbeat_jitter=self.duration("FRACTAL_HEARTBEAT_JITTER", 5.0),
            spot_poll_interval=self.duration("FRACTAL_SPOT_POLL_INTERVAL", 5.0, positive=True),
            docker_unreachable_budget=self.duration(
                "FRACTAL_DOCKER_UNREACHABLE_BUDGET", 120.0, positive=True
            ),
            container_wait=self.duration("FRACTAL_CONTAINER_WAIT", 10.0),
            handshake_timeout=self.duration("FRACTAL_HANDSHAKE_TIMEOUT", 60.0, positive=True),
            start_ecs_agent=self.boolean(
                "FRACTAL_START_ECS_AGENT", app_env in (AppEnv.STAGING, AppEnv.PROD)
            ),
            ecs_agent_image=self.raw("FRACTAL_ECS_AGENT_IMAGE") or "amazon/amazon-ecs-agent:latest",
            shutdown_report_timeout=self.duration(
                "FRACTAL_SHUTDOWN_REPORT_TIMEOUT", 5.0, positive=True
            ),
            log_format=self.choice(
                "FRACTAL_LOG_FORMAT", "json" if deployed else "console", LOG_FORMATS
            ),
            log_level=self.choice("FRACTAL_LOG_LEVEL", "info", LOG_LEVELS),
        )
        if config.heartbeat_jitter >= config.heartbeat_interval:
            raise ConfigError(
                f"FRACTAL_HEARTBEAT_JITTER={config.heartbeat_jitter:g} is not allowed; it must be "
                f"smaller than FRACTAL_HEARTBEAT_INTERVAL ({config.heartbeat_interval:g})"
            )
        return config

    # -- one method per kind of value -------------------------------------------------------

    def app_env(self) -> AppEnv:
        value = self.raw("APP_ENV") or "localdev"
        try:
            return _ENV_ALIASES[value.lower()]
        except KeyError:
            allowed = ", ".join(_ENV_ALIASES)
            raise ConfigError(f"APP_ENV={value!r} is not allowed; use one of: {allowed}") from None

    def path(self, name: str, default: str) -> Path:
        value = self.raw(name) or default
        if not value.startswith("/"):
            raise ConfigError(f"{name}={value!r} is not allowed; it must be an absolute path")
        return Path(value)

    def docker_socket(self) -> Path:
        value = self.raw("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if not value.startswith("unix://") or not value[len("unix://") :].startswith("/"):
            raise ConfigError(
                f"DOCKER_HOST={value!r} is not allowed; only unix:///absolute/path is supported"
            )
        return Path(value[len("unix://") :])

    def bind(self, name: str, default: str) -> tuple[str, int]:
        value = self.raw(name) or default
        host, sep, port_text = value.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not _is_ip_address(host) or not port_text.isdigit() or int(port_text) > 65535:
            raise ConfigError(
                f"{name}={value!r} is not allowed; use IP:PORT with an IP address of this "
                "host and a port 0-65535 (e.g. 0.0.0.0:4678, 127.0.0.1:0, [::]:4678)"
            )
        return host, int(port_text)

    def url(self, name: str, default: str) -> str:
        if name in self.env and not self.env[name].strip():
            return ""  # set but empty: disabled on purpose, whatever the environment's default
        value = self.raw(name)
        if value is None:
            return default
        if not value.startswith(("http://", "https://")) or len(value) < 10 or " " in value:
            raise ConfigError(f"{name}={value!r} is not allowed; use an http:// or https:// URL")
        return value.rstrip("/")

    def imds_url(self, default: str) -> str | None:
        value = self.raw("FRACTAL_IMDS_URL") or default
        if value.lower() == "off":
            return None
        if not value.startswith(("http://", "https://")):
            raise ConfigError(
                f"FRACTAL_IMDS_URL={value!r} is not allowed; use an http(s):// URL or 'off'"
            )
        return value.rstrip("/")

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={value!r} is not allowed; use 1/0, true/false, yes/no or on/off")

    def duration(self, name: str, default: float, *, positive: bool = False) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
            kind = "a positive" if positive else "a non-negative"
            raise ConfigError(
                f"{name}={value!r} is not allowed; use {kind} number of seconds (e.g. 5 or 0.5)"
            )
        return seconds

    def count(self, name: str, default: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        # ASCII digits only: str.isdigit() also accepts "²", which int() rejects.
        if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 100_000):
            raise ConfigError(f"{name}={value!r} is not allowed; use a whole number 1-100000")
        return int(value)

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = (self.raw(name) or default).lower()
        if value not in allowed:
            raise ConfigError(
                f"{name}={self.raw(name)!r} is not allowed; use one of: {', '.join(allowed)}"
            )
        return value

    def secret(self, name: str, credential: str) -> Secret | None:
        """A secret from NAME, NAME_FILE, or the systemd credential, in that order."""
        direct = self.raw(name)
        if direct is not None:
            return Secret(direct)
        file_name = self.raw(f"{name}_FILE")
        if file_name is not None:
            return Secret(_read_secret_file(f"{name}_FILE", Path(file_name)))
        credentials_dir = self.raw("CREDENTIALS_DIRECTORY")
        if credentials_dir is not None:
            path = Path(credentials_dir) / credential
            if path.exists():
                return Secret(_read_secret_file(f"credential {credential!r}", path))
        return None

    @staticmethod
    def check_dsn(dsn: Secret) -> None:
        """Validated by sentry-sdk's own parser, so a DSN accepted here never fails start-up."""
        value = dsn.reveal()
        if not value.startswith(("http://", "https://")) or "@" not in value:
            # The DSN carries a key: name the variable, never echo the value.
            raise ConfigError(
                "SENTRY_DSN is not allowed: it must look like https://<key>@<host>/<project>"
            )
        # Imported here: sentry-sdk is heavy, and only a configured DSN needs it.
        from sentry_sdk.utils import Dsn

        try:
            Dsn(value)
        except Exception as exc:  # BadDsn, or ValueError from urllib (a port out of range)
            reason = _without_key(str(exc), value)
            raise ConfigError(
                f"SENTRY_DSN is not allowed: sentry-sdk rejects it ({reason}); "
                "it must look like https://<key>@<host>/<project>"
            ) from None


# Directories FRACTAL_PRIVATE_DIR may never be: the service makes it 0700 at start. Whole trees
# (`/etc/ssl` included) and single directories whose children are fair game (`/var/lib/x`).
_SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
    "/sys", "/usr",
)  # fmt: skip
_SYSTEM_DIRS = frozenset(
    {
        "/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/run/user", "/snap", "/srv",
        "/tmp", "/var", "/var/backups", "/var/cache", "/var/lib", "/var/local", "/var/lock",  # noqa: S108
        "/var/log", "/var/mail", "/var/opt", "/var/run", "/var/spool", "/var/tmp",  # noqa: S108
    }
)  # fmt: skip


def check_private_dir(private_dir: Path, root: Path) -> None:
    """Refuse `/`, system directories, and FRACTAL_ROOT (shared with containers) around it."""
    path = os.path.normpath(private_dir)
    in_tree = any(path == tree or path.startswith(f"{tree}/") for tree in _SYSTEM_TREES)
    if path in _SYSTEM_DIRS or in_tree:
        raise ConfigError(
            f"FRACTAL_PRIVATE_DIR={str(private_dir)!r} is not allowed: a system directory; use "
            "a directory of the service's own (e.g. /fractalprivate or /var/lib/fractal-hostd)"
        )
    shared = os.path.normpath(root)
    if path == shared or path.startswith(f"{shared}/") or shared.startswith(f"{path}/"):
        raise ConfigError(
            f"FRACTAL_PRIVATE_DIR={str(private_dir)!r} is not allowed: it must lie outside "
            f"FRACTAL_ROOT ({root}), which containers share, and not contain it"
        )


def _without_key(text: str, dsn: str) -> str:
    """`text` with the DSN's key (its user-info part) masked, on one line."""
    userinfo = dsn.split("://", 1)[-1].split("@", 1)[0]
    for part in (userinfo, *userinfo.split(":")):
        if part:
            text = text.replace(part, "***")
    return " ".join(text.split())


def _is_ip_address(host: str) -> bool:
    # Addresses only: a name would need a DNS lookup to validate, and the API binds to
    # addresses of this host anyway.
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _read_secret_file(what: str, path: Path) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{what}={str(path)!r} cannot be read: {reason}") from None
    if not value:
        raise ConfigError(f"{what}={str(path)!r} is not allowed: the file is empty")
    return value
