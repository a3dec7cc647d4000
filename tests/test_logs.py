"""Logging set-up: JSON lines, console format, level validation and redaction."""

from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fractal_hostd.process import logs
from fractal_hostd.process.logs import FILTERED, redact_text, redact_value
from tests.logging_fixtures import restore_logging

__all__ = ["restore_logging"]  # autouse fixture


def json_lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_json_line_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(fmt="json", level="info")
    logging.getLogger("fractal_hostd.test").info(
        "container %s seen", "abc", extra={"container_id": "abc", "host_port": 32768}
    )
    (line,) = json_lines(capsys.readouterr().err)
    assert line["level"] == "info"
    assert line["logger"] == "fractal_hostd.test"
    assert line["msg"] == "container abc seen"
    assert line["container_id"] == "abc"
    assert line["host_port"] == 32768
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["ts"]))


def test_json_exception_text_and_private_keys(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(fmt="json", level="info")
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("t").exception("failed", extra={logs.NO_SENTRY_EVENT: True})
    (line,) = json_lines(capsys.readouterr().err)
    assert "Traceback" in str(line["exc"])
    assert "ValueError: bad value" in str(line["exc"])
    assert logs.NO_SENTRY_EVENT not in line


def test_json_extra_cannot_override_the_frame(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(fmt="json", level="info")
    logging.getLogger("t").info("m", extra={"ts": "forged", "level": "forged", "obj": object()})
    (line,) = json_lines(capsys.readouterr().err)
    assert line["ts"] != "forged"
    assert line["level"] == "info"
    assert str(line["obj"]).startswith("<object object")  # not serialisable: str()


def test_console_format(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(fmt="console", level="debug")
    logging.getLogger("fractal_hostd.api").debug("serving", extra={"url": "https://x:4678"})
    err = capsys.readouterr().err
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} DEBUG   fractal_hostd\.api: serving  url=https://x:4678\n", err
    )


def test_level_filters_and_setup_is_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(fmt="json", level="info")
    logs.setup_logging(fmt="json", level="WARNING")
    log = logging.getLogger("t")
    log.info("hidden")
    log.warning("shown")
    lines = json_lines(capsys.readouterr().err)
    assert [line["msg"] for line in lines] == ["shown"]  # once: the first handler was replaced


def test_noisy_libraries_are_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(fmt="json", level="debug")
    logging.getLogger("httpx").info('HTTP Request: GET http://docker/v1.41/_ping "200 OK"')
    logging.getLogger("hypercorn.access").info("GET /health 200")
    logging.getLogger("httpx").warning("kept")
    assert [line["msg"] for line in json_lines(capsys.readouterr().err)] == ["kept"]


@pytest.mark.parametrize("name", ["debug", "INFO", "Warning", "error", "critical"])
def test_levels_accepted(name: str) -> None:
    assert logs.parse_level(name) == logging.getLevelName(name.upper())


@pytest.mark.parametrize("name", ["verbose", "", "warn", "10"])
def test_bad_levels_name_the_variable(name: str) -> None:
    with pytest.raises(ValueError, match="FRACTAL_LOG_LEVEL") as info:
        logs.parse_level(name)
    assert "debug, info, warning, error, critical" in str(info.value)


def test_bad_format_rejected() -> None:
    with pytest.raises(ValueError, match="FRACTAL_LOG_FORMAT"):
        logs.setup_logging(fmt="xml", level="info")  # type: ignore[arg-type]


# --- redaction -------------------------------------------------------------------------------

SECRET = "s3cr3t-VALUE-42"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"token={SECRET}&x=1", f"token={FILTERED}&x=1"),
        (f"refresh_token={SECRET}", f"refresh_token={FILTERED}"),
        (f"FRACTAL_WEBSERVER_AUTH_SECRET={SECRET}", f"FRACTAL_WEBSERVER_AUTH_SECRET={FILTERED}"),
        (
            f'{{"access_token": "{SECRET}", "dpi": 96}}',
            f'{{"access_token": "{FILTERED}", "dpi": 96}}',
        ),
        (f"{{'client_secret': '{SECRET}'}}", f"{{'client_secret': '{FILTERED}'}}"),
        (f"OAuthToken(access_token='{SECRET}')", f"OAuthToken(access_token='{FILTERED}')"),
        (f'password="two {SECRET}"', f'password="{FILTERED}"'),
        (f"Authorization: Bearer {SECRET}", f"Authorization: {FILTERED}"),
        (f"header was Bearer {SECRET} then", f"header was Bearer {FILTERED} then"),
        (f"Basic {SECRET}==", f"Basic {FILTERED}"),
        (f"Cookie: session={SECRET}", f"Cookie: {FILTERED}"),
        (f"SENTRY_DSN=https://{SECRET}@o1.ingest.sentry.io/5", f"SENTRY_DSN={FILTERED}"),
        (
            f"posting to https://{SECRET}@o1.ingest.sentry.io/5",
            f"posting to https://{FILTERED}@o1.ingest.sentry.io/5",
        ),
        (f"http://user:{SECRET}@host/x", f"http://{FILTERED}@host/x"),
        ("AuthToken: abc-def", f"AuthToken: {FILTERED}"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert SECRET not in redact_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "container abc seen running on tty 12",
        "auth failed for host port 32768",  # no value follows the word
        "token expired: fetching a new one",
        "handshake with the webserver succeeded",
        "https://127.0.0.1:4678/status",
        "dpi=96 host_port=32768",
    ],
)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert redact_text(text) == text


def test_registered_secret_is_masked_anywhere() -> None:
    logs.register_secret("plainvalue-without-a-key-name")
    logs.register_secret("short")  # too short to mask safely: ignored
    logs.register_secret(None)
    text = "the webserver sent plainvalue-without-a-key-name as a short thing"
    assert redact_text(text) == f"the webserver sent {FILTERED} as a short thing"


def test_redact_value_walks_structures() -> None:
    value = {
        "host_port": 1,
        "Authorization": "Bearer x",
        "nested": [{"refresh_token": "r", "note": f"token={SECRET}"}],
        "tuple": ("a", f"secret={SECRET}"),
    }
    assert redact_value(value) == {
        "host_port": 1,
        "Authorization": FILTERED,
        "nested": [{"refresh_token": FILTERED, "note": f"token={FILTERED}"}],
        "tuple": ["a", f"secret={FILTERED}"],
    }


def test_log_output_redacted_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging(fmt="json", level="info")
    log = logging.getLogger("t")
    log.info("body %s", {"access_token": SECRET}, extra={"client_secret": SECRET, "n": 1})
    try:
        raise RuntimeError(f"rclone said token={SECRET}")
    except RuntimeError:
        log.error("mount failed", exc_info=True)
    err = capsys.readouterr().err
    assert SECRET not in err
    first, second = json_lines(err)
    assert first["client_secret"] == FILTERED
    assert first["n"] == 1
    assert f"token={FILTERED}" in str(second["exc"])


def test_redaction_keeps_the_template_when_nothing_is_masked() -> None:
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "tty pool empty for %s", ("c1",), None
    )
    logs.RedactingFilter().filter(record)
    assert (record.msg, record.args) == ("tty pool empty for %s", ("c1",))  # Sentry groups by it
    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "got %s", (f"token={SECRET}",), None
    )
    logs.RedactingFilter().filter(record)
    assert record.getMessage() == f"got token={FILTERED}"


def test_a_broken_log_call_never_raises_nor_leaks_its_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("no text for this one")

    logs.setup_logging(fmt="json", level="info")
    root = logging.getLogger()
    # As in production, only the service's handler: pytest's own would fail on these records.
    root.handlers[:] = [h for h in root.handlers if isinstance(h, logs._ServiceHandler)]
    log = logging.getLogger("t")
    try:
        raise RuntimeError("the error being handled")
    except RuntimeError:
        # Both would raise out of the filter, i.e. out of the logging call, into the caller.
        log.exception("handling %s for %s failed", f"token={SECRET}")
    log.warning("value: %s", Unprintable())
    err = capsys.readouterr().err
    assert SECRET not in err
    first, second = json_lines(err)
    assert "unloggable record" in str(first["msg"])
    assert "TypeError" in str(first["msg"])
    assert "unloggable record" in str(second["msg"])
    assert "no text" in str(second["msg"])


_PATTERNS = (
    logs._QUOTED_VALUE_RE,
    logs._BARE_VALUE_RE,
    logs._AUTH_SCHEME_RE,
    logs._URL_USERINFO_RE,
)
# Fragments of what the patterns look for, so generated text comes close to matching often.
_FRAGMENTS = st.sampled_from(
    ["auth", "Secret", "TOKEN", "pass", "passw", "api", "key", "-", "_", "=", ":", '"', "'",
     " ", "bearer ", "Basic ", "x", "://", "@", "https", "dsn",
     "\u017fecret", "credent\u0131al", "\u212a"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_FRAGMENTS | st.text(max_size=3), max_size=12).map("".join))
def test_the_fast_path_never_skips_text_a_pattern_would_change(text: str) -> None:
    if not logs._may_hold_secret(text):
        assert all(pattern.search(text) is None for pattern in _PATTERNS)


def test_the_fast_path_skips_ordinary_lines_and_still_masks_registered_secrets() -> None:
    assert not logs._may_hold_secret("GET /status 200 0.8 ms")
    logs.register_secret("plain-registered-value-42")
    assert redact_text("GET /x?v=plain-registered-value-42 200") == f"GET /x?v={FILTERED} 200"
    # A longer secret holding a shorter one is masked whole.
    logs.register_secret("plain-registered-value-42-and-more")
    assert redact_text("v plain-registered-value-42-and-more") == f"v {FILTERED}"
    logs.forget_registered_secrets()
    assert redact_text("v plain-registered-value-42") == "v plain-registered-value-42"


@given(
    st.one_of(
        st.floats(min_value=0, max_value=4e9),
        # Half a microsecond before a millisecond or a second: where rounding decides.
        st.integers(0, 4 * 10**9).map(lambda s: s + 0.9999995),
        st.integers(0, 4 * 10**12).map(lambda ms: ms / 1000),
    )
)
def test_the_timestamp_of_a_line_is_what_datetime_gives(created: float) -> None:
    """The formatter caches each second's text (`_rfc3339`): the same text as datetime."""
    import datetime as dt

    expected = dt.datetime.fromtimestamp(created, tz=dt.UTC).isoformat(timespec="milliseconds")
    assert logs._rfc3339(created) == expected.replace("+00:00", "Z")


def test_the_formatter_writes_the_fields_the_filter_redacted() -> None:
    """The filter keeps the redacted `extra=` fields on the record for the formatter."""
    record = logging.LogRecord("x", logging.INFO, "f", 1, "m", None, None)
    record.__dict__.update({"note": "token=abc", "n": 1})
    logs.RedactingFilter().filter(record)
    record.__dict__["late"] = "set after the filter"  # not an `extra=` field: not written
    line = json.loads(logs.JsonFormatter().format(record))
    assert {k: line[k] for k in ("note", "n")} == {"note": f"token={FILTERED}", "n": 1}
    assert "late" not in line
