"""The served OpenAPI document against the served app, checked by schemathesis (issue 13 item 5).

schemathesis (a dev dependency) reads /openapi.json from the running API over TLS and sends
what the document allows and what it forbids, with every check on (server errors, status
codes, content types, response schemas, positive data accepted, negative data rejected,
auth not ignored, unsupported methods, ...). Bounded and repeatable: a fixed number of
examples per operation and deterministic generation (tests/schemathesis.toml), one worker.
The app is the real one over the real registry and lifecycle (tests/api_fixtures.py), with
one live container, so valid requests for its host port succeed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from tests.api_fixtures import SECRET, make_api, running_api

CONFIG = Path(__file__).with_name("schemathesis.toml")
BOUND = 240  # seconds; the run takes ~15 s on an idle core


async def test_the_api_keeps_every_promise_of_its_openapi_document(tmp_path: Path) -> None:
    api = make_api(tmp_path, container_wait=0.01)
    await api.add_container(40000)
    with trio.fail_after(BOUND):
        async with running_api(tmp_path, api=api) as running:
            done = await trio.run_process(
                [
                    sys.executable,
                    "-c",
                    "from schemathesis.cli import schemathesis; schemathesis()",
                    "--config-file",
                    str(CONFIG),
                    "--no-color",
                    "run",
                    f"{running.url}/openapi.json",
                    "--checks",
                    "all",
                    "--header",
                    f"Authorization: Bearer {SECRET}",
                    "--tls-verify",
                    str(running.tls.certfile),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                cwd=tmp_path,  # its report directory, if any, lands there
            )
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, output[-12000:]
    assert "Tested: 8" in output, output[-4000:]


def test_the_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate

    from fractal_hostd.api.openapi import openapi_document

    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises, naming the bad part, on an invalid document
