"""Strict parsing of request bodies: JSON object in, typed request out, or InvalidInput.

Pure functions, no Quart: every rule is testable alone. Strictness is deliberate (contract §5:
"bad input never disturbs the service"): an int is a JSON integer — not a bool, a fraction or
a string of digits; strings are bounded; enums are closed. Unknown fields are ignored, so the
webserver may send more than we read (the original service also ignored them).

Every rule is one the OpenAPI document (openapi.py) can state, so the document and the
server agree (schemathesis checks both ways): JSON has a single number type, and JSON
Schema's `integer` admits `96.0`, so `96.0` is the integer 96 here too. Text that goes into
a file or an rclone config (ARN, OAuth token parts) is printable ASCII, as ARNs and OAuth
tokens (RFC 6749's VSCHAR) are by definition; the operator's drain reason is one line of any
text. Both are `pattern`s, where Python's `str.isprintable` (Unicode categories) has no JSON
Schema equivalent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from fractal_hostd.cloud_storage.mounts import MountRequest, OAuthToken
from fractal_hostd.cloud_storage.rclone_config import PROVIDERS
from fractal_hostd.containers.mapping import MAX_DPI, MIN_DPI

MAX_STRING = 4096
MAX_TOKEN = 8192  # OAuth access/refresh tokens (Google's are ~2 KB; room to grow)
MAX_ARN = 2048
MAX_REASON = 500
# Patterns in the syntax ECMA-262 (JSON Schema) and Python's re read alike.
PRINTABLE_ASCII_PATTERN: Final = "^[\\u0020-\\u007e]*$"
# No C0 control (newlines included), DEL, C1 control (NEL included), U+2028 or U+2029.
ONE_LINE_PATTERN: Final = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"
NO_NUL_PATTERN: Final = "^[^\\u0000]*$"
_PRINTABLE_ASCII = re.compile(PRINTABLE_ASCII_PATTERN)
_ONE_LINE = re.compile(ONE_LINE_PATTERN)


class InvalidInput(Exception):
    """The request is malformed; the message names the field and is safe to send back."""


@dataclass(frozen=True)
class StartValues:
    host_port: int
    dpi: int
    container_arn: str | None = None


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; InvalidInput for anything else (no NaN/Infinity either)."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers beyond Python's digit limit.
        raise InvalidInput("body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidInput("body must be a JSON object")
    return value


def parse_drain_request(body: dict[str, Any]) -> str | None:
    """The operator's optional `reason` for POST /drain (one printable line; "" is none)."""
    reason = _optional_string(body, "reason", MAX_REASON)
    if reason is not None and not _ONE_LINE.fullmatch(reason):
        raise InvalidInput("reason must be a single line of printable characters")
    return reason or None


def parse_dpi_request(body: dict[str, Any]) -> StartValues:
    return StartValues(host_port=_host_port(body), dpi=_dpi(body))


def parse_start_values_request(body: dict[str, Any]) -> StartValues:
    host_port, dpi = _host_port(body), _dpi(body)
    # Accepted for compatibility with the webserver's request; nothing on the host uses them.
    _optional_string(body, "user_id", MAX_STRING)
    _optional_string(body, "client_app_auth_secret", MAX_STRING)
    arn = _optional_string(body, "container_ARN", MAX_ARN)
    if arn is not None and not _PRINTABLE_ASCII.fullmatch(arn):
        raise InvalidInput("container_ARN must be printable ASCII")
    # An empty ARN means "none": there is nothing to write into the ContainerARN file.
    return StartValues(host_port=host_port, dpi=dpi, container_arn=arn or None)


def parse_mount_request(body: dict[str, Any]) -> MountRequest:
    host_port = _host_port(body)
    provider = body.get("provider")
    if not isinstance(provider, str) or provider not in PROVIDERS:
        raise InvalidInput(f"provider must be one of: {', '.join(PROVIDERS)}")
    # Token parts go into an rclone config file: one printable line each.
    token = OAuthToken(
        access_token=_printable(body, "access_token", MAX_TOKEN),
        refresh_token=_printable(body, "refresh_token", MAX_TOKEN),
        expiry=_printable(body, "expiry", 64),
        token_type=_printable(body, "token_type", 64),
    )
    return MountRequest(
        host_port=host_port,
        provider=provider,
        token=token,
        client_id=_optional_string(body, "client_id", MAX_STRING) or None,
        client_secret=_optional_string(body, "client_secret", MAX_STRING) or None,
    )


def _host_port(body: dict[str, Any]) -> int:
    return _int_in_range(body, "host_port", 1, 65535)


def _dpi(body: dict[str, Any]) -> int:
    return _int_in_range(body, "dpi", MIN_DPI, MAX_DPI)


def _int_in_range(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if type(value) is float and value.is_integer():
        value = int(value)  # 96.0 is 96 (see the module doc); 96.5 and 1e400 (inf) are not
    if type(value) is not int or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}")
    return value


def _string(body: dict[str, Any], name: str, max_length: int) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise InvalidInput(f"{name} must be a non-empty string of at most {max_length} characters")
    _check_encodable(name, value)
    return value


def _printable(body: dict[str, Any], name: str, max_length: int) -> str:
    value = _string(body, name, max_length)
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise InvalidInput(f"{name} must be printable ASCII")
    return value


def _optional_string(body: dict[str, Any], name: str, max_length: int) -> str | None:
    """Absent and null both mean "not given"."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise InvalidInput(f"{name} must be a string of at most {max_length} characters")
    _check_encodable(name, value)
    return value


def _check_encodable(name: str, value: str) -> None:
    # JSON can carry lone surrogates ("\ud800"); they cannot be written to a file or a config.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{name} must be valid Unicode text") from exc
    if "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


__all__ = [
    "MAX_DPI",
    "MIN_DPI",
    "NO_NUL_PATTERN",
    "ONE_LINE_PATTERN",
    "PRINTABLE_ASCII_PATTERN",
    "PROVIDERS",
    "InvalidInput",
    "MountRequest",
    "StartValues",
]
