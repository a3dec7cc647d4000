"""Logging set-up: one stderr handler, JSON lines or a console format, and redaction.

The primary rule is that callers never log secrets, tokens or request bodies. Redaction here is
the last line of defence, and the same patterns serve the Sentry scrubber in `telemetry`, so the
two outputs of the service (journald and Sentry) mask the same things:

* values of keys that name a secret (`auth`, `secret`, `token`, `password`, `cookie`, `refresh`,
  `access`, `credential`, `dsn`, `api_key`, `private_key`), whether the key is a dict key, an
  `extra=` field, or text such as `token=abc`, `"access_token": "abc"` or `Authorization: Bearer x`;
* `Bearer`/`Basic` credentials anywhere in text;
* user info in URLs (`https://key@sentry.example/1`);
* every value registered with `register_secret` (the webserver auth secret, the AuthToken, ...),
  wherever it appears.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

LogFormat = Literal["json", "console"]

FILTERED: Final = "[Filtered]"

# Put `extra={NO_SENTRY_EVENT: True}` on an ERROR record that must not become a Sentry event
# (e.g. the supervisor's crash log line, whose exception `telemetry.capture_crash` reports).
# Keys with a leading underscore are left out of log output and of Sentry's `extra`.
NO_SENTRY_EVENT: Final = "_no_sentry_event"

# Set on a record once `RedactingFilter` has redacted all of it (message and `extra=` fields):
# the Sentry breadcrumb made from it afterwards needs no second pass (`telemetry`).
REDACTED: Final = "_redacted"
# The `extra=` fields `RedactingFilter` redacted, kept on the record for the formatter, which
# would otherwise collect them from the record's ~25 attributes again.
_REDACTED_CONTEXT: Final = "_redacted_context"

LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Libraries whose INFO lines are per-request noise (httpx logs every request at INFO).
_QUIET_LOGGERS: Final = ("httpx", "httpcore", "hpack", "urllib3")

_SENSITIVE_WORD = (
    r"(?:auth|secret|token|passw|pwd|cookie|refresh|access|credential|dsn"
    r"|api[-_]?key|private[-_]?key)"
)
_SENSITIVE_KEY_RE: Final = re.compile(_SENSITIVE_WORD, re.IGNORECASE)
_KEY = rf"(?<![\w.-])[\w.-]*?{_SENSITIVE_WORD}[\w.-]*"
_SEP = r"[\"']?\s*[:=]\s*"
# `token="a b"`, `'secret': 'x'`, `"access_token": "ya29..."`
_QUOTED_VALUE_RE: Final = re.compile(rf"({_KEY})({_SEP})([\"'])(.*?)(\3)", re.IGNORECASE)
# `token=abc&x=1`, `SECRET: abc`, `Authorization: Bearer abc`
_BARE_VALUE_RE: Final = re.compile(
    rf"({_KEY})({_SEP})(?![\"'\[])((?:bearer\s+|basic\s+)?[^\s\"'&,;)}}\]]+)", re.IGNORECASE
)
_AUTH_SCHEME_RE: Final = re.compile(r"\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
_URL_USERINFO_RE: Final = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s:@]+(?::[^/\s@]*)?@", re.I)

# Every pattern above needs one of these in the text: the words of `_SENSITIVE_WORD` (with
# each spelling of its `[-_]?`), an auth scheme or a URL's `://`. Most log lines ("GET /status
# 200 0.8 ms") hold none, and a few substring tests on the lowered text cost ~1 us where the
# four substitutions, each trying a match at every position, cost 10-30 us per string.
_HINTS: Final = (
    "auth", "secret", "token", "passw", "pwd", "cookie", "refresh", "access", "credential",
    "dsn", "apikey", "api-key", "api_key", "privatekey", "private-key", "private_key",
    "bearer", "basic", "://",
)  # fmt: skip


def _may_hold_secret(text: str) -> bool:
    """False only when none of the patterns can match `text`."""
    if not text.isascii():
        # re.IGNORECASE also folds a few non-ASCII letters onto ASCII ones (long s, Kelvin
        # sign, dotless i): let the patterns themselves decide.
        return True
    lowered = text.lower()
    for hint in _HINTS:  # noqa: SIM110 (a loop: any() over a generator is twice as slow)
        if hint in lowered:
            return True
    return False


# Shorter values would mask ordinary words; real secrets and tokens are much longer.
_MIN_REGISTERED_LENGTH: Final = 8
_registered_secrets: set[str] = set()
_registered_lock = threading.Lock()
# The registered secrets, longest first (a secret that contains another is masked whole),
# rebuilt when one is registered: readers take the current tuple without a lock (one
# reference read); a substring test per secret is cheaper than any regex for these few.
_registered_ordered: tuple[str, ...] = ()


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears in logs and Sentry events from now on."""
    global _registered_ordered
    if value and len(value) >= _MIN_REGISTERED_LENGTH:
        with _registered_lock:
            _registered_secrets.add(value)
            _registered_ordered = tuple(sorted(_registered_secrets, key=len, reverse=True))


def forget_registered_secrets() -> None:
    """Stop masking every registered value (for tests: the registry is process-wide)."""
    global _registered_ordered
    with _registered_lock:
        _registered_secrets.clear()
        _registered_ordered = ()


@functools.lru_cache(maxsize=1024)
def is_sensitive_key(key: str) -> bool:
    """True when a mapping key or field name says its value is a secret."""
    # Cached: the same few field names (`extra=` keys, Sentry's payload keys) come back.
    return bool(_SENSITIVE_KEY_RE.search(key))


def redact_text(text: str) -> str:
    """Mask secret-looking parts of free text (messages, exception values, tracebacks)."""
    for secret in _registered_ordered:
        if secret in text:
            text = text.replace(secret, FILTERED)
    if not _may_hold_secret(text):
        return text
    text = _QUOTED_VALUE_RE.sub(rf"\1\2\3{FILTERED}\5", text)
    text = _BARE_VALUE_RE.sub(rf"\1\2{FILTERED}", text)
    text = _AUTH_SCHEME_RE.sub(rf"\1 {FILTERED}", text)
    return _URL_USERINFO_RE.sub(rf"\1{FILTERED}@", text)


# Values that hold no text: returned as they are before the costlier checks (the ABC check
# for Mapping alone is ~0.3 us, and most `extra=` fields are numbers).
_SCALARS: Final = frozenset({int, float, bool, type(None)})


def redact_value(value: Any) -> Any:
    """Redact a structured value: secret keys masked, strings redacted, containers walked."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: FILTERED if isinstance(k, str) and is_sensitive_key(k) else redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def parse_level(name: str) -> int:
    """`FRACTAL_LOG_LEVEL` value -> logging level; ValueError naming the allowed values."""
    level = LEVELS.get(name.strip().lower())
    if level is None:
        allowed = ", ".join(LEVELS)
        raise ValueError(f"FRACTAL_LOG_LEVEL: {name!r} is not one of {allowed}")
    return level


_STANDARD_ATTRS: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


def record_context(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record (private `_` keys left out), as `RedactingFilter`
    left them when it has seen the record."""
    redacted: dict[str, Any] | None = record.__dict__.get(_REDACTED_CONTEXT)
    if redacted is not None:
        return redacted
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD_ATTRS and not k.startswith("_")
    }


class RedactingFilter(logging.Filter):
    """Handler filter that masks secrets in the message, the `extra=` fields and tracebacks.

    It edits the record in place, so the Sentry logging integration (which sees the record after
    the handlers) gets the masked version too. The message template is only replaced when
    redaction changed something, so Sentry still groups records by their template.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # A filter that raises propagates into the logging call (logging guards only emit()):
        # a log line with the wrong arguments, or a value whose str() fails, would then crash
        # the task that logged, often from inside its own error handling. Logging never raises,
        # so that record becomes one safe line instead (without its arguments: they are what
        # could not be checked for secrets).
        try:
            self._redact(record)
            setattr(record, REDACTED, True)
        except Exception as exc:
            record.msg = f"unloggable record at {record.pathname}:{record.lineno}: {exc!r}"
            record.args = None
            record.exc_info = record.exc_text = record.stack_info = None
            record.msg = redact_text(record.msg)
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        context = record_context(record)
        for key, value in context.items():
            context[key] = FILTERED if is_sensitive_key(key) else redact_value(value)
            setattr(record, key, context[key])
        record.__dict__[_REDACTED_CONTEXT] = context
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)


# The formatted second of the last line: lines come many per second, and formatting a whole
# datetime took 1.8 us of a line's ~27 (a tuple swap is atomic: threads need no lock).
_last_second: tuple[int, str] = (-1, "")


def _rfc3339(created: float) -> str:
    """`2026-11-30T12:00:00.123Z` (UTC, milliseconds truncated as `isoformat` does)."""
    global _last_second
    # Rounded to the microsecond first, as datetime.fromtimestamp does (x.999 is x.99899...).
    fraction, whole = math.modf(created)
    second, micro = int(whole), round(fraction * 1_000_000)
    if micro == 1_000_000:
        second, micro = second + 1, 0
    cached, prefix = _last_second
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, prefix)
    return f"{prefix}.{micro // 1000:03d}Z"


# One encoder for every line: `json.dumps` with arguments builds a new one per call (~1.4 us).
_JSON_ENCODER: Final = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the `extra=` fields, exc/stack."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_context(record).items():
            line.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return _JSON_ENCODER.encode(line)


class ConsoleFormatter(logging.Formatter):
    """`12:00:00.123 INFO  fractal_hostd.api: message  key=value ...` for localdev."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        text = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        context = record_context(record)
        if context:
            text += "  " + " ".join(f"{k}={v}" for k, v in context.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


# sd-daemon(3) priorities: journald reads a leading `<N>` as the line's level.
_SYSLOG_PRIORITY: Final[Mapping[int, int]] = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (custom levels: the next standard one up)."""
    for level in sorted(_SYSLOG_PRIORITY):
        if levelno <= level:
            return _SYSLOG_PRIORITY[level]
    return _SYSLOG_PRIORITY[logging.CRITICAL]


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd set up (JOURNAL_STREAM=<dev>:<inode>).

    Comparing the device and inode, not just the variable's presence (systemd.exec(5)): a child
    inherits JOURNAL_STREAM even when its stderr goes elsewhere.
    """
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # no stderr, or not a real file
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalPrefixFormatter(logging.Formatter):
    """Puts the `<N>` syslog priority before each line of another formatter's text.

    journald takes it as the entry's level and strips it (SyslogLevelPrefix=yes, the default),
    so `journalctl -p err` shows errors while the stored message stays the plain JSON line.
    Every line: journald splits a stream on newlines, and a traceback is one record.
    """

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


class _ServiceHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `setup_logging` installed, so calling it again replaces it."""


def setup_logging(*, fmt: LogFormat, level: str) -> None:
    """Send all logging to stderr (journald under systemd) in the chosen format.

    When stderr is the journal, each line also carries its syslog level (`<3>` for errors).

    Idempotent: a second call replaces the handler installed by the first. Handlers added by
    others (pytest's caplog, for one) are left alone.
    """
    if fmt not in ("json", "console"):
        raise ValueError(f"FRACTAL_LOG_FORMAT: {fmt!r} is not one of json, console")
    root = logging.getLogger()
    root.setLevel(parse_level(level))
    for old in [h for h in root.handlers if isinstance(h, _ServiceHandler)]:
        root.removeHandler(old)
    handler = _ServiceHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else ConsoleFormatter()
    if stderr_is_journal():
        formatter = JournalPrefixFormatter(formatter)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # hypercorn's access log stays off (`Config.accesslog = None`, its default): the API counts
    # requests in /metrics instead of one log line per request.
    logging.getLogger("hypercorn.access").disabled = True
    logging.captureWarnings(True)
