"""The pure body rules of fractal_hostd.api.validation."""

from __future__ import annotations

from typing import Any

import pytest

from fractal_hostd.api.validation import (
    InvalidInput,
    parse_dpi_request,
    parse_json_object,
    parse_mount_request,
    parse_start_values_request,
)

MOUNT = {
    "host_port": 1,
    "provider": "dropbox",
    "access_token": "a",
    "refresh_token": "r",
    "expiry": "2026-01-01T00:00:00Z",
    "token_type": "bearer",
}


@pytest.mark.parametrize(
    "raw",
    [b"", b" ", b"{", b"[]", b"1", b'"x"', b"null", b"\xc3\x28", b"Infinity", b'{"a": -NaN}'],
)
def test_only_a_json_object_is_a_body(raw: bytes) -> None:
    with pytest.raises(InvalidInput):
        parse_json_object(raw)


def test_json_object_parses_and_keeps_unknown_fields() -> None:
    assert parse_json_object(b'{"a": 1, "b": [true]}') == {"a": 1, "b": [True]}


@pytest.mark.parametrize("value", [True, False, 96.0, "96", None, [96], {"v": 96}, 10**30])
def test_ints_must_be_real_json_integers(value: Any) -> None:
    with pytest.raises(InvalidInput, match="dpi"):
        parse_dpi_request({"host_port": 1, "dpi": value})


@pytest.mark.parametrize(("port", "dpi"), [(1, 1), (65535, 1000), (4678, 96)])
def test_bounds_are_inclusive(port: int, dpi: int) -> None:
    values = parse_dpi_request({"host_port": port, "dpi": dpi, "extra": "ignored"})
    assert (values.host_port, values.dpi, values.container_arn) == (port, dpi, None)


def test_start_values_optional_fields() -> None:
    values = parse_start_values_request(
        {"host_port": 2, "dpi": 3, "container_ARN": "arn:x", "user_id": None}
    )
    assert values.container_arn == "arn:x"
    with pytest.raises(InvalidInput, match="user_id"):
        parse_start_values_request({"host_port": 2, "dpi": 3, "user_id": 5})
    with pytest.raises(InvalidInput, match="client_app_auth_secret"):
        parse_start_values_request({"host_port": 2, "dpi": 3, "client_app_auth_secret": "x" * 4097})


def test_mount_request_builds_the_token() -> None:
    request = parse_mount_request(
        {**MOUNT, "access_token": "SECRET-A", "client_id": "", "client_secret": None}
    )
    assert request.provider == "dropbox"
    assert request.token.access_token == "SECRET-A"
    assert request.token.expiry == "2026-01-01T00:00:00Z"
    assert (request.client_id, request.client_secret) == (None, None)
    assert "SECRET-A" not in repr(request)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("access_token", "line\nbreak"),
        ("refresh_token", "tab\there"),
        ("token_type", ""),
        ("expiry", "x" * 65),
        ("access_token", "\ud800"),
        ("provider", ["dropbox"]),
        ("provider", "Dropbox"),
    ],
)
def test_mount_token_fields_are_single_printable_lines(field: str, value: Any) -> None:
    with pytest.raises(InvalidInput, match=field):
        parse_mount_request({**MOUNT, field: value})
