"""The pure body rules of fractal_hostd.api.validation."""

from __future__ import annotations

from typing import Any

import pytest

from fractal_hostd.api.validation import (
    InvalidInput,
    parse_dpi_request,
    parse_drain_request,
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


@pytest.mark.parametrize(
    "value", [True, False, 96.5, float("inf"), "96", None, [96], {"v": 96}, 10**30, 1e30]
)
def test_ints_must_be_real_json_integers(value: Any) -> None:
    with pytest.raises(InvalidInput, match="dpi"):
        parse_dpi_request({"host_port": 1, "dpi": value})


def test_an_integral_json_number_is_an_integer_as_json_schema_says() -> None:
    # The OpenAPI document says `integer`, which JSON Schema defines to admit 96.0.
    values = parse_dpi_request(parse_json_object(b'{"host_port": 40000.0, "dpi": 96.0}'))
    assert (values.host_port, values.dpi) == (40000, 96)
    assert type(values.dpi) is int


@pytest.mark.parametrize("arn", ["arn:aws:ecs:r:1:container/\u00e9", "a\u00a0b", "a\u00adb"])
def test_an_arn_is_printable_ascii(arn: str) -> None:
    body = parse_json_object(f'{{"host_port": 1, "dpi": 1, "container_ARN": "{arn}"}}'.encode())
    with pytest.raises(InvalidInput, match="container_ARN must be printable ASCII"):
        parse_start_values_request(body)


@pytest.mark.parametrize(
    ("reason", "ok"),
    [("kernel update", True), ("Wartung über Nacht", True), ("a\nb", False), ("a\u2028b", False)],
)
def test_a_drain_reason_is_one_line_of_any_text(reason: str, ok: bool) -> None:
    body = {"reason": reason}
    if ok:
        assert parse_drain_request(body) == body["reason"]
    else:
        with pytest.raises(InvalidInput, match="reason"):
            parse_drain_request(body)
    assert parse_drain_request({"reason": ""}) is None
    assert parse_drain_request({}) is None


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
    with_secret = parse_mount_request({**MOUNT, "client_secret": "SECRET-C"})
    assert "SECRET-C" not in repr(with_secret)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("access_token", "line\nbreak"),
        ("refresh_token", "tab\there"),
        ("token_type", ""),
        ("expiry", "x" * 65),
        ("access_token", "\ud800"),
        ("access_token", "non-ASCII \u00e9"),
        ("provider", ["dropbox"]),
        ("provider", "Dropbox"),
    ],
)
def test_mount_token_fields_are_single_printable_lines(field: str, value: Any) -> None:
    with pytest.raises(InvalidInput, match=field):
        parse_mount_request({**MOUNT, field: value})
