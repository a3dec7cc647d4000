"""Configuration parsing (contract §1): defaults, aliases, secrets and every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from fractal_hostd.config import AppEnv, Config, ConfigError, Secret

DEPLOYED = {"APP_ENV": "prod", "FRACTAL_WEBSERVER_AUTH_SECRET": "s3cret-value"}


def parse(**env: str) -> Config:
    return Config.from_env(env)


def test_localdev_defaults() -> None:
    config = parse()
    assert config.app_env is AppEnv.LOCALDEV
    assert config.root == Path("/fractal")
    assert config.private_dir == Path("/fractalprivate")
    assert config.docker_socket == Path("/var/run/docker.sock")
    assert config.api_bind == "127.0.0.1:4678"
    assert config.webserver_url == ""
    assert config.webserver_auth_secret is None
    assert config.imds_url is None
    assert config.sentry_enabled is False
    assert (config.heartbeat_interval, config.heartbeat_jitter) == (60.0, 5.0)
    assert config.spot_poll_interval == 5.0
    assert config.docker_unreachable_budget == 120.0
    assert config.container_wait == 10.0
    assert config.start_ecs_agent is False
    assert config.ecs_agent_image == "amazon/amazon-ecs-agent:latest"
    assert config.shutdown_report_timeout == 5.0
    assert (config.log_format, config.log_level) == ("console", "info")
    assert config.mappings_dir == Path("/fractal/containerResourceMappings")
    assert config.cloud_storage_dir == Path("/fractal/cloudStorage")


def test_deployed_defaults() -> None:
    config = Config.from_env(DEPLOYED)
    assert config.api_bind == "0.0.0.0:4678"
    assert config.webserver_url.startswith("https://")
    assert config.imds_url == "http://169.254.169.254"
    assert config.start_ecs_agent is True
    assert config.log_format == "json"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("local", AppEnv.LOCALDEV),
        ("localdev", AppEnv.LOCALDEV),
        ("development", AppEnv.DEV),
        ("dev", AppEnv.DEV),
        ("staging", AppEnv.STAGING),
        ("production", AppEnv.PROD),
        ("PROD", AppEnv.PROD),
    ],
)
def test_app_env_aliases(value: str, expected: AppEnv) -> None:
    env = {**DEPLOYED, "APP_ENV": value}
    assert Config.from_env(env).app_env is expected


def test_dev_has_no_ecs_agent_by_default() -> None:
    assert Config.from_env({**DEPLOYED, "APP_ENV": "dev"}).start_ecs_agent is False


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"APP_ENV": "qa"}, ("APP_ENV", "'qa'", "localdev")),
        ({"FRACTAL_ROOT": "relative/dir"}, ("FRACTAL_ROOT", "'relative/dir'", "absolute")),
        ({"FRACTAL_PRIVATE_DIR": "x"}, ("FRACTAL_PRIVATE_DIR", "'x'", "absolute")),
        ({"DOCKER_HOST": "tcp://1.2.3.4:2375"}, ("DOCKER_HOST", "tcp://", "unix://")),
        ({"DOCKER_HOST": "unix://relative"}, ("DOCKER_HOST", "unix://relative", "unix://")),
        ({"FRACTAL_API_BIND": "4678"}, ("FRACTAL_API_BIND", "'4678'", "IP:PORT")),
        ({"FRACTAL_API_BIND": "0.0.0.0:99999"}, ("FRACTAL_API_BIND", "99999", "0-65535")),
        ({"FRACTAL_API_BIND": "0.0.0.0:http"}, ("FRACTAL_API_BIND", "http", "IP:PORT")),
        ({"FRACTAL_API_BIND": "999.1.1.1:4678"}, ("FRACTAL_API_BIND", "999.1.1.1", "IP:PORT")),
        ({"FRACTAL_API_BIND": "myhost:4678"}, ("FRACTAL_API_BIND", "myhost", "IP address")),
        ({"FRACTAL_WEBSERVER_URL": "ftp://x.example"}, ("FRACTAL_WEBSERVER_URL", "ftp", "http")),
        ({"FRACTAL_IMDS_URL": "169.254.169.254"}, ("FRACTAL_IMDS_URL", "169.254", "'off'")),
        ({"USE_PROD_SENTRY": "maybe"}, ("USE_PROD_SENTRY", "'maybe'", "yes/no")),
        ({"FRACTAL_START_ECS_AGENT": "2"}, ("FRACTAL_START_ECS_AGENT", "'2'", "on/off")),
        ({"FRACTAL_HEARTBEAT_INTERVAL": "0"}, ("FRACTAL_HEARTBEAT_INTERVAL", "'0'", "positive")),
        ({"FRACTAL_HEARTBEAT_INTERVAL": "1m"}, ("FRACTAL_HEARTBEAT_INTERVAL", "'1m'", "seconds")),
        ({"FRACTAL_HEARTBEAT_JITTER": "-1"}, ("FRACTAL_HEARTBEAT_JITTER", "'-1'", "non-negative")),
        (
            {"FRACTAL_HEARTBEAT_INTERVAL": "10", "FRACTAL_HEARTBEAT_JITTER": "10"},
            ("FRACTAL_HEARTBEAT_JITTER", "10", "smaller than FRACTAL_HEARTBEAT_INTERVAL"),
        ),
        ({"FRACTAL_SPOT_POLL_INTERVAL": "nan"}, ("FRACTAL_SPOT_POLL_INTERVAL", "'nan'", "")),
        ({"FRACTAL_DOCKER_UNREACHABLE_BUDGET": "inf"}, ("FRACTAL_DOCKER_UNREACHABLE", "inf", "")),
        ({"FRACTAL_CONTAINER_WAIT": "-0.5"}, ("FRACTAL_CONTAINER_WAIT", "-0.5", "seconds")),
        ({"FRACTAL_SHUTDOWN_REPORT_TIMEOUT": "0"}, ("FRACTAL_SHUTDOWN_REPORT_TIMEOUT", "'0'", "")),
        ({"FRACTAL_API_MAX_CONNECTIONS": "0"}, ("FRACTAL_API_MAX_CONNECTIONS", "'0'", "1-")),
        ({"FRACTAL_API_MAX_CONNECTIONS": "many"}, ("FRACTAL_API_MAX_CONNECTIONS", "many", "")),
        ({"FRACTAL_API_MAX_CONNECTIONS": "\u00b2"}, ("FRACTAL_API_MAX_CONNECTIONS", "1-", "")),
        ({"FRACTAL_LOG_FORMAT": "xml"}, ("FRACTAL_LOG_FORMAT", "'xml'", "console, json")),
        ({"FRACTAL_LOG_LEVEL": "loud"}, ("FRACTAL_LOG_LEVEL", "'loud'", "debug")),
        ({"APP_ENV": "prod"}, ("FRACTAL_WEBSERVER_AUTH_SECRET", "required outside localdev", "")),
    ],
)
def test_every_error_names_variable_value_and_allowed(
    env: dict[str, str], names: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_env(env)
    message = str(info.value)
    assert "\n" not in message
    for part in names:
        assert part in message


def test_durations_accept_decimals() -> None:
    config = parse(
        FRACTAL_CONTAINER_WAIT="0.5", FRACTAL_HEARTBEAT_INTERVAL="2.5", FRACTAL_HEARTBEAT_JITTER="0"
    )
    assert config.container_wait == 0.5
    assert config.heartbeat_interval == 2.5


@pytest.mark.parametrize("truthy", ["1", "true", "YES", "on"])
def test_use_prod_sentry_enables_sentry_in_localdev(truthy: str) -> None:
    config = parse(USE_PROD_SENTRY=truthy, SENTRY_DSN="http://key@127.0.0.1:9/1")
    assert config.sentry_enabled is True


def test_sentry_needs_a_dsn_and_the_right_environment() -> None:
    assert parse(SENTRY_DSN="http://key@127.0.0.1:9/1").sentry_enabled is False
    assert Config.from_env(DEPLOYED).sentry_enabled is False
    with_dsn = {**DEPLOYED, "SENTRY_DSN": "https://key@sentry.example/1"}
    assert Config.from_env(with_dsn).sentry_enabled is True


def test_bad_dsn_is_named_but_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        parse(SENTRY_DSN="not-a-dsn-secretkey")
    assert "SENTRY_DSN" in str(info.value)
    assert "secretkey" not in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "https://sekrit1@sentry.example/notanumber",  # project must be a number
        "https://sekrit1@sentry.example/",  # no project
        "https://sekrit1:sekrit2@sentry.example:99999/1",  # port out of range
        "http://sekrit1@sentry.example:abc/1",  # port not a number
    ],
)
def test_dsn_sentry_sdk_rejects_is_a_config_error_without_the_key(dsn: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(SENTRY_DSN=dsn)
    message = str(info.value)
    assert message.startswith("SENTRY_DSN is not allowed: sentry-sdk rejects it")
    assert "sekrit" not in message
    assert "\n" not in message


def test_api_bind_ipv6_and_port_zero() -> None:
    config = parse(FRACTAL_API_BIND="[::1]:0")
    assert (config.api_host, config.api_port) == ("::1", 0)
    assert config.api_bind == "[::1]:0"


def test_imds_off_and_url() -> None:
    assert parse(FRACTAL_IMDS_URL="OFF").imds_url is None
    assert parse(FRACTAL_IMDS_URL="http://127.0.0.1:5/").imds_url == "http://127.0.0.1:5"


def test_overrides_win_over_environment() -> None:
    config = Config.from_env({"FRACTAL_LOG_LEVEL": "info"}, {"FRACTAL_LOG_LEVEL": "debug"})
    assert config.log_level == "debug"


def test_secret_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    env = {"APP_ENV": "prod", "FRACTAL_WEBSERVER_AUTH_SECRET_FILE": str(secret_file)}
    config = Config.from_env(env)
    assert config.webserver_auth_secret == Secret("from-file")


def test_secret_from_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "webserver_auth_secret").write_text("from-credential")
    env = {"APP_ENV": "staging", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    secret = Config.from_env(env).webserver_auth_secret
    assert secret is not None
    assert secret.reveal() == "from-credential"


def test_environment_secret_wins_over_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file")
    env = {
        "FRACTAL_WEBSERVER_AUTH_SECRET": "direct",
        "FRACTAL_WEBSERVER_AUTH_SECRET_FILE": str(tmp_path / "secret"),
    }
    secret = Config.from_env(env).webserver_auth_secret
    assert secret is not None
    assert secret.reveal() == "direct"


@pytest.mark.parametrize("content", [None, ""])
def test_unreadable_or_empty_secret_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="FRACTAL_WEBSERVER_AUTH_SECRET_FILE"):
        parse(FRACTAL_WEBSERVER_AUTH_SECRET_FILE=str(path))


def test_secret_never_shows_in_repr() -> None:
    config = Config.from_env(DEPLOYED)
    assert "s3cret-value" not in repr(config)
    assert "s3cret-value" not in str(config.webserver_auth_secret)


def test_empty_webserver_url_disables_it_in_every_environment() -> None:
    config = Config.from_env({**DEPLOYED, "APP_ENV": "dev", "FRACTAL_WEBSERVER_URL": ""})
    assert config.webserver_url == ""
    assert Config.from_env({**DEPLOYED, "FRACTAL_WEBSERVER_URL": " "}).webserver_url == ""


def test_api_max_connections_default_and_value() -> None:
    assert Config.from_env({}).api_max_connections == 256
    assert Config.from_env({"FRACTAL_API_MAX_CONNECTIONS": "32"}).api_max_connections == 32
