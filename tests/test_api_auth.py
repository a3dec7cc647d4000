"""Authentication cannot be bypassed: missing, wrong, empty, wrong type, header vs body, both.

Unit tests of Authenticator plus the same cases through the app. No network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestClientProtocol as Client

from fractal_hostd.api.auth import Authenticator
from tests.api_fixtures import SECRET, Api, make_api

PORT = 40000
GOOD_HEADER = f"Bearer {SECRET}"


@pytest.fixture
async def api(tmp_path: Path) -> Api:
    api = make_api(tmp_path)
    await api.add_container(PORT)
    return api


def test_empty_secret_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        Authenticator("")


def test_repr_hides_the_secret() -> None:
    assert SECRET not in repr(Authenticator(SECRET))


@pytest.mark.parametrize(
    ("headers", "body", "allowed"),
    [
        ([], None, False),
        ([], {}, False),
        ([GOOD_HEADER], None, True),
        ([f"bearer   {SECRET}  "], None, True),  # scheme is case-insensitive, spaces trimmed
        ([], {"auth_secret": SECRET}, True),
        ([GOOD_HEADER], {"auth_secret": SECRET}, True),
        # Every presented credential must be right.
        ([GOOD_HEADER], {"auth_secret": "wrong"}, False),
        (["Bearer wrong"], {"auth_secret": SECRET}, False),
        ([GOOD_HEADER, "Bearer wrong"], None, False),
        ([GOOD_HEADER], {"auth_secret": None}, False),
        # Wrong, empty, truncated, extended, other schemes, wrong types.
        (["Bearer wrong"], None, False),
        (["Bearer "], None, False),
        (["Bearer"], None, False),
        ([""], None, False),
        ([SECRET], None, False),
        ([f"Basic {SECRET}"], None, False),
        ([f"Bearer {SECRET[:-1]}"], None, False),
        ([f"Bearer {SECRET}x"], None, False),
        ([f"Bearer {SECRET} {SECRET}"], None, False),
        ([], {"auth_secret": ""}, False),
        ([], {"auth_secret": 0}, False),
        ([], {"auth_secret": [SECRET]}, False),
        ([], {"auth_secret": {"secret": SECRET}}, False),
        ([], {"auth_secret": True}, False),
        ([], {"auth_secret": "\ud800"}, False),
        ([], {"AUTH_SECRET": SECRET}, False),
    ],
)
def test_authenticator_rules(
    headers: list[str], body: dict[str, Any] | None, allowed: bool
) -> None:
    assert Authenticator(SECRET).is_authorized(headers, body) is allowed


def test_non_ascii_secret_matches_utf8_bytes_in_header_and_body() -> None:
    secret = "sécret-ключ"
    auth = Authenticator(secret)
    # What a server decodes from UTF-8 header bytes: Latin-1 text.
    header = "Bearer " + secret.encode("utf-8").decode("latin-1")
    assert auth.is_authorized([header], None)
    assert auth.is_authorized([], {"auth_secret": secret})
    assert not auth.is_authorized([f"Bearer {secret}"], None)  # not what a wire can carry


@pytest.mark.parametrize(
    ("headers", "body_secret", "status"),
    [
        ({}, None, 401),
        ({"Authorization": GOOD_HEADER}, None, 200),
        ({}, SECRET, 200),
        ({"Authorization": GOOD_HEADER}, SECRET, 200),
        ({"Authorization": GOOD_HEADER}, "wrong", 401),
        ({"Authorization": "Bearer wrong"}, SECRET, 401),
        ({"Authorization": ""}, None, 401),
        ({}, "", 401),
        ({}, 12345, 401),
    ],
)
async def test_endpoint_auth(
    api: Api, headers: dict[str, str], body_secret: Any, status: int
) -> None:
    body: dict[str, Any] = {"host_port": PORT, "dpi": 96}
    if body_secret is not None:
        body["auth_secret"] = body_secret
    answer = await api.app.test_client().put("/set_container_dpi", json=body, headers=headers)
    assert answer.status_code == status
    if status == 401:
        assert json.loads(await answer.get_data()) == {"error": "unauthorized"}
        assert not api.mapping_file(PORT, "DPI").exists()


async def test_invalid_input_without_credentials_is_401_not_400(api: Api) -> None:
    """A stranger learns nothing about validation: bad JSON and bad fields are 401 first."""
    client: Client = api.app.test_client()
    for raw in (b"{", b"[]", b'{"host_port": "x"}', b'{"auth_secret": "wrong", "dpi": -1}'):
        answer = await client.put("/set_container_dpi", data=raw)
        assert answer.status_code == 401


async def test_secret_is_never_echoed(api: Api) -> None:
    client: Client = api.app.test_client()
    for body in (
        {"auth_secret": SECRET, "host_port": "bad"},
        {"auth_secret": SECRET + "x", "host_port": PORT, "dpi": 96},
    ):
        answer = await client.put("/set_container_dpi", json=body)
        assert SECRET not in await answer.get_data(as_text=True)
        assert SECRET not in str(dict(answer.headers))
