"""Pure construction of rclone config files and `rclone mount` command lines.

Secrets (OAuth tokens, client secret) go into a config file only, never onto a command line
or into the environment: /proc/<pid>/cmdline is world-readable and /proc/<pid>/environ is
readable by the same user. The original service built configs through a generated shell
script without escaping; here every value is validated and quoted so that no input can end
a line, start a new section or key, or be rewritten by rclone's config parser.

rclone's INI parser (goconfig) facts this relies on, checked against rclone 1.60 with
`rclone config dump` (tests/test_cloud_storage_config.py keeps checking them):
- a value wrapped in backticks is taken verbatim up to the LAST backtick of the line, so
  any single-line text (quotes, backticks, `#`, `;`, `=`, leading spaces) survives;
- `%(name)s` inside a value is replaced by another key's value (interpolation), so `%(`
  must never reach the file: it is rejected in plain values and JSON-escaped in the token;
- a line break would end the value: control characters are rejected.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Provider:
    rclone_type: str  # rclone backend
    folder: str  # mount point name under $FRACTAL_ROOT/cloudStorage/<host_port>/


PROVIDERS: dict[str, Provider] = {
    "google_drive": Provider(rclone_type="drive", folder="Google Drive"),
    "dropbox": Provider(rclone_type="dropbox", folder="Dropbox"),
}


@dataclass(frozen=True)
class OAuthToken:
    """The OAuth token the webserver sends; the secret parts stay out of repr (logs, Sentry)."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expiry: str
    token_type: str


@dataclass(frozen=True)
class MountRequest:
    """One container's request to mount one provider (the API's body, validated); the
    secrets stay out of repr (logs, Sentry)."""

    host_port: int
    provider: str
    token: OAuthToken
    client_id: str | None
    client_secret: str | None = field(repr=False)


@dataclass(frozen=True)
class Backend:
    """What the remote points at: the provider's rclone type (tests substitute `local`)."""

    rclone_type: str
    root: str = ""  # path inside the remote; "" = the remote's root


@dataclass(frozen=True)
class MountOptions:
    """How the mount looks to the container and how rclone runs it (see docs/cloud-storage.md)."""

    uid: int = 1000  # owner of every file in the mount: the containers' user
    gid: int = 1000
    umask: int = 0o007  # -> directories 0770, files 0660, enforced by the kernel
    daemon_wait: float = 10.0  # how long `rclone mount --daemon` waits for the mount to appear
    write_back: float = 1.0  # delay between closing a written file and its upload


class InvalidSetting(ValueError):
    """A value that cannot go into an rclone config; names the field, never shows the value."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field_name = field_name
        self.reason = reason


_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_TIMESTAMP_PREFIX = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ", re.MULTILINE)
MAX_ERROR_LENGTH = 1000


def remote_name(host_port: int, provider: str) -> str:
    return f"{provider}-{host_port}"


def config_file_name(host_port: int, provider: str) -> str:
    return f"{host_port}-{provider}.conf"


def normalize_expiry(expiry: str) -> str:
    """RFC 3339 as Go's time.Time wants it; "" stays "" (no expiry known).

    Accepts what Python's fromisoformat accepts (a space instead of "T", no offset = UTC),
    so a webserver sending `str(datetime)` still works; anything else is refused here with
    a clear message instead of an obscure parse error from rclone.
    """
    if expiry == "":
        return ""
    try:
        moment = dt.datetime.fromisoformat(expiry)
    except ValueError:
        raise InvalidSetting("expiry", "not an RFC 3339 / ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.isoformat()


def token_json(token: OAuthToken) -> str:
    """Go oauth2.Token JSON, rclone's `token` value. `%` is escaped so `%(` cannot occur."""
    for name in ("access_token", "refresh_token", "token_type"):
        if _CONTROL_CHARS.search(getattr(token, name)):
            raise InvalidSetting(name, "must not contain control characters (line breaks)")
    fields = {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "refresh_token": token.refresh_token,
    }
    expiry = normalize_expiry(token.expiry)
    if expiry:  # an absent expiry is Go's zero time: "never expires"
        fields["expiry"] = expiry
    text = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    return text.replace("%", "\\u0025")


def ini_value(field_name: str, value: str) -> str:
    """One validated, backtick-quoted config value."""
    if _CONTROL_CHARS.search(value):
        raise InvalidSetting(field_name, "must not contain control characters (line breaks)")
    if "%(" in value:
        raise InvalidSetting(field_name, "must not contain '%('")
    return f"`{value}`"


def render_config(
    remote: str,
    backend: Backend,
    token: OAuthToken,
    client_id: str | None,
    client_secret: str | None,
) -> str:
    """The whole config file: one section for one remote."""
    lines = [f"[{remote}]", f"type = {ini_value('type', backend.rclone_type)}"]
    if client_id:
        lines.append(f"client_id = {ini_value('client_id', client_id)}")
    if client_secret:
        lines.append(f"client_secret = {ini_value('client_secret', client_secret)}")
    lines.append(f"token = {ini_value('token', token_json(token))}")
    return "\n".join(lines) + "\n"


def rclone_duration(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def mount_argv(
    rclone: str,
    *,
    remote: str,
    backend: Backend,
    mount_point: Path,
    config_path: Path,
    cache_dir: Path,
    options: MountOptions,
) -> list[str]:
    """`rclone mount` in daemon mode; no secret on it (they are in `config_path`)."""
    return [
        rclone,
        "mount",
        f"{remote}:{backend.root}",
        str(mount_point),
        "--config",
        str(config_path),
        "--cache-dir",
        str(cache_dir),
        "--daemon",
        "--daemon-wait",
        rclone_duration(options.daemon_wait),
        "--allow-other",
        "--default-permissions",
        "--uid",
        str(options.uid),
        "--gid",
        str(options.gid),
        "--umask",
        f"{options.umask:04o}",
        "--vfs-cache-mode",
        "writes",
        "--vfs-write-back",
        rclone_duration(options.write_back),
        "--ask-password=false",
    ]


def secret_values(token: OAuthToken, client_secret: str | None) -> list[str]:
    return [s for s in (token.access_token, token.refresh_token, client_secret or "") if s]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """rclone's error output made safe to log and answer with: secrets replaced, one line."""
    forms = {form for secret in secrets for form in (secret, json.dumps(secret)[1:-1]) if form}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "[redacted]")
    text = _TIMESTAMP_PREFIX.sub("", text.strip())
    text = _CONTROL_CHARS.sub(" ", text.replace("\n", "; "))
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 3] + "..."
    return text
