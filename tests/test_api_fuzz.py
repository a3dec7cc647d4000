"""Hypothesis fuzzing of bodies, headers, methods and paths through Quart's test client.

Invariant (contract §5): bad input never gives a 5xx and never changes anything — every
answer is JSON (or the metrics text), and unless the answer is 200 the registry and every
mapping file are exactly as before. Bounded example counts keep this to a few seconds.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api_fixtures import SECRET, Api, make_api, snapshot

PORT = 40000
PATHS = [
    "/set_container_dpi",
    "/set_container_start_values",
    "/mount_cloud_storage",
    "/health",
    "/status",
    "/metrics",
    "/openapi.json",
]
METHODS = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS"]
FIELDS = [
    "host_port",
    "dpi",
    "container_ARN",
    "user_id",
    "client_app_auth_secret",
    "provider",
    "access_token",
    "refresh_token",
    "expiry",
    "token_type",
    "client_id",
    "client_secret",
    "auth_secret",
]
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([PORT, 96, 0, 65535, 65536, "google_drive", "dropbox", SECRET, ""]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)
authorizations = st.sampled_from([None, f"Bearer {SECRET}", "Bearer ", SECRET]) | header_text.map(
    lambda t: f"Bearer {t}"
)


async def _fresh(tmp_path: Path) -> Api:
    api = make_api(Path(tempfile.mkdtemp(dir=tmp_path)), container_wait=0)
    await api.add_container(PORT)
    return api


async def _check(api: Api, response: Any) -> None:
    data = await response.get_data()
    if response.status_code == 503:  # GET /ready's documented "not ready" (HEAD: no body)
        assert not data or json.loads(data)["failing"], data
    else:
        assert response.status_code < 500, data
    if response.status_code == 200 and response.mimetype == "text/plain":
        return
    if data:
        assert isinstance(json.loads(data), dict)


@FUZZ
@given(
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS),
    body=bodies,
    authorization=authorizations,
)
async def test_json_bodies_never_5xx_nor_change_state(
    tmp_path: Path, method: str, path: str, body: dict[str, Any], authorization: str | None
) -> None:
    api = await _fresh(tmp_path)
    before = snapshot(api)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await api.app.test_client().open(path, method=method, json=body, headers=headers)
    await _check(api, response)
    if response.status_code != 200:
        assert snapshot(api) == before


@FUZZ
@given(
    path=st.sampled_from(PATHS),
    raw=st.binary(max_size=300),
    content_type=header_text,
    extra_header=header_text,
)
async def test_raw_bodies_and_headers_never_5xx_nor_change_state(
    tmp_path: Path, path: str, raw: bytes, content_type: str, extra_header: str
) -> None:
    api = await _fresh(tmp_path)
    before = snapshot(api)
    # quart's TestClientProtocol.open lacks the json default its implementation has.
    response = await api.app.test_client().open(  # type: ignore[call-arg]
        path,
        method="PUT" if "container" in path else "POST",
        data=raw,
        headers={
            "Authorization": f"Bearer {SECRET}",
            "Content-Type": content_type,
            "X-Fuzz": extra_header,
        },
    )
    await _check(api, response)
    assert response.status_code != 200 or raw.strip()  # an empty body never succeeds
    if response.status_code != 200:
        assert snapshot(api) == before


# A path starting "//" would make the test client read what follows as a host name (and fail
# on it with UnicodeError before any request is made): such paths keep a first segment.
url_path_chars = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%/:@!$&'()*+,;=", max_size=60
).map(lambda path: "x" + path if path.startswith("/") else path)


@FUZZ
@given(method=st.sampled_from(METHODS), path=url_path_chars)
async def test_random_paths_never_5xx(tmp_path: Path, method: str, path: str) -> None:
    api = await _fresh(tmp_path)
    before = snapshot(api)
    # quart's TestClientProtocol.open lacks the json default its implementation has.
    response = await api.app.test_client().open(  # type: ignore[call-arg]
        "/" + path, method=method, headers={"Authorization": f"Bearer {SECRET}"}
    )
    await _check(api, response)
    assert snapshot(api) == before
