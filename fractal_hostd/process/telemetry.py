"""Sentry for fractal_hostd: initialisation, scrubbing, crash reports and a bounded flush.

Choices (see docs/telemetry.md):

* The default transport (a background thread doing blocking HTTP). sentry-sdk's async transport
  is asyncio-only and does not run under trio.
* No trace headers on our own requests: `trace_propagation_targets=[]` (no `sentry-trace` or
  `baggage` header on any outgoing request), and no httpx integration (below).
* Only sentry-sdk's default integrations (`auto_enabling_integrations=False`): of the
  auto-enabling ones installed here, httpx would hook every Docker socket, IMDS and webserver
  request for spans and breadcrumbs we do not use, Flask (installed with Quart, never run) only
  renamed the SDK, and Quart's ASGI middleware and request hooks took 13 % of a request's CPU
  for transactions we never send (the app's error handler reports a handler's exception with
  method and path through the logging integration, and `api.app` gives each request its own
  isolation scope); probing for all of them cost 160 ms of start-up. argv is disabled too
  (`sys.argv` in every event; CLI flags mirror the environment, so a secret passed as a flag
  would ride along).
* No PII, no local variables, no request bodies. `send_default_pii` is left unset, which
  sentry-sdk 2.75 reads as False (setting it at all raises a DeprecationWarning there). Local
  variables are off because handler frames hold OAuth tokens and the auth secret; tracebacks
  still carry file, line, function and source context.
* `before_send`/`before_breadcrumb` scrub the whole event as a last line of defence, with the
  same patterns as the log redaction (`logs.redact_text`, `logs.register_secret`).
* ERROR (and CRITICAL) log records become Sentry events, INFO and WARNING become breadcrumbs.
  That is how "error is reported (log + Sentry)" is met with one `logger.error(...)` call (TTY
  pool exhausted, for one). A record with `extra={logs.NO_SENTRY_EVENT: True}` stays a log line.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import sentry_sdk
import trio
from sentry_sdk.integrations.argv import ArgvIntegration
from sentry_sdk.integrations.logging import (
    LoggingIntegration,
    ignore_logger,
    ignore_logger_for_sentry_logs,
)
from sentry_sdk.types import Event, Hint
from sentry_sdk.utils import BadDsn, event_from_exception

from fractal_hostd.hoststate import InstanceMetadata
from fractal_hostd.process.child_process import child_environment
from fractal_hostd.process.logs import (
    FILTERED,
    NO_SENTRY_EVENT,
    REDACTED,
    is_sensitive_key,
    redact_text,
)

GIT_COMMIT_ENV: Final = "FRACTAL_GIT_COMMIT"
_COMMIT_RE: Final = re.compile(r"[0-9a-f]{7,40}")
_COMMIT_LENGTH: Final = 12

# Source lines come from our files on disk, never from runtime data: scrubbing them would only
# mangle code such as `secret = load(...)`. `modules`/`sdk` list package names.
_KEYS_NOT_SCRUBBED: Final = frozenset(
    {"pre_context", "context_line", "post_context", "modules", "sdk"}
)

# One flush slice holds sentry-sdk's worker lock this long at most, so an abandoned flush thread
# never keeps a later close (ours or the atexit hook's) waiting for longer than that.
_FLUSH_SLICE: Final = 0.1


def git_commit(package_dir: Path | None = None) -> str | None:
    """The deployed commit: $FRACTAL_GIT_COMMIT, else `git rev-parse HEAD` of a checkout."""
    commit = os.environ.get(GIT_COMMIT_ENV, "").strip().lower()
    if not commit:
        source = package_dir or Path(__file__).resolve().parent.parent
        if not (source / ".git").exists():
            return None
        try:
            done = subprocess.run(
                ["git", "-C", str(source), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=2,
                check=False,
                env=child_environment(),
            )
        except (OSError, subprocess.SubprocessError):
            return None
        commit = done.stdout.strip().lower() if done.returncode == 0 else ""
    return commit[:_COMMIT_LENGTH] if _COMMIT_RE.fullmatch(commit) else None


def release_name(version: str, commit: str | None = None) -> str:
    """`0.1.0+g5ec0961a1b2c` when a commit is known, else the bare version."""
    commit = commit if commit is not None else git_commit()
    return f"{version}+g{commit}" if commit else version


def init_sentry(*, dsn: str | None, enabled: bool, environment: str, release: str) -> bool:
    """Start the Sentry client; False (and nothing started) when disabled or without a DSN.

    Raises ValueError for a malformed DSN (the DSN itself is not echoed: it holds a key).
    """
    if not enabled or not dsn:
        return False
    try:
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            release=release,
            include_local_variables=False,
            max_request_body_size="never",
            trace_propagation_targets=[],
            auto_session_tracking=False,
            # Only the default integrations (logging, stdlib, threading, ...), none of the
            # auto-enabling ones: those we would meet (httpx, Flask, Quart) are unwanted, and
            # probing for the ~40 others took 160 ms of start-up (measured: init 190 -> 30 ms).
            auto_enabling_integrations=False,
            disabled_integrations=[ArgvIntegration],
            integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
            before_send=scrub_event,
            before_breadcrumb=scrub_breadcrumb,
        )
    except BadDsn as exc:
        raise ValueError(f"SENTRY_DSN: not a valid Sentry DSN ({exc.__class__.__name__})") from None
    return True


def journal_only(logger: logging.Logger) -> logging.Logger:
    """Keep the lines of `logger` out of Sentry: no breadcrumb, never an event; returns it.

    For a line whose breadcrumb costs more than it tells: sentry-sdk's breadcrumb of a log
    record (~30 us) cost as much as the rest of the line (~32 us: the record, redaction,
    JSON, the write). The logging integration skips an ignored logger with one set lookup.
    """
    ignore_logger(logger.name)
    ignore_logger_for_sentry_logs(logger.name)
    return logger


def scrub(value: Any) -> Any:
    """Mask secrets anywhere in a Sentry payload (keys that name a secret, text, bodies)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        scrubbed: dict[Any, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str) or key in _KEYS_NOT_SCRUBBED:
                scrubbed[key] = item
            elif is_sensitive_key(key) and item not in (None, "", [], {}):
                scrubbed[key] = FILTERED
            else:
                scrubbed[key] = scrub(item)
        return scrubbed
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value


def scrub_event(event: Event, hint: Hint) -> Event | None:
    """`before_send`: drop opted-out log records, mask request bodies and users, scrub the rest."""
    record = hint.get("log_record")
    if record is not None and getattr(record, NO_SENTRY_EVENT, False):
        return None
    cleaned: Event = scrub(event)
    cleaned.pop("user", None)  # no PII: the service has no users of its own to report
    request = cleaned.get("request")
    if isinstance(request, dict) and request.get("data") is not None:
        request["data"] = FILTERED
    return cleaned


def scrub_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """`before_breadcrumb`: same rules as events.

    A breadcrumb made from a log record our handler's `RedactingFilter` has already redacted
    whole (its message and `extra=` fields: all a log breadcrumb carries besides the logger's
    name, level and time) passes as it is; the second pass was ~0.4 % of a logged request's
    samples (py-spy, `PUT /set_container_dpi`). Every other breadcrumb is scrubbed.
    """
    record = hint.get("log_record") if hint else None
    if record is not None and getattr(record, REDACTED, False):
        return crumb
    cleaned: dict[str, Any] = scrub(crumb)
    return cleaned


def set_instance_tags(metadata: InstanceMetadata) -> None:
    """Tag every later event with the EC2 identity of this host (the original's tag names)."""
    scope = sentry_sdk.get_global_scope()
    scope.set_tag("aws.instance-id", metadata.instance_id)
    scope.set_tag("aws.instance-type", metadata.instance_type)
    scope.set_tag("aws.region", metadata.region)
    scope.set_tag("aws.ami-id", metadata.ami_id)
    scope.set_tag("aws.public-ipv4", metadata.public_ipv4 or "none")


def _innermost(exc: BaseException) -> BaseException:
    # trio wraps one crashing child in one ExceptionGroup per nursery: report the child itself
    # (its traceback already runs up to the nursery) so issues group by the real error.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def capture_crash(exc: BaseException) -> None:
    """Report the exception that ends the service: one fatal, unhandled event."""
    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    event, hint = event_from_exception(
        _innermost(exc),
        client_options=client.options,
        mechanism={"type": "fractal_hostd.shutdown", "handled": False},
    )
    event["level"] = "fatal"
    sentry_sdk.capture_event(event, hint=hint)


def capture_warning(msg: str, **context: Any) -> None:
    """A warning-level Sentry event with `context` attached (scrubbed like everything else)."""
    with sentry_sdk.new_scope() as scope:
        if context:
            scope.set_context("details", context)
        sentry_sdk.capture_message(msg, level="warning")


@contextmanager
def task_scope(name: str) -> Iterator[None]:
    """Own Sentry scope for a long-lived task's body, tagged `task=<name>`.

    sentry-sdk has no trio integration: without this, tags and breadcrumbs set in one task land
    on the scope every task shares.
    """
    with sentry_sdk.isolation_scope() as scope:
        scope.set_tag("task", name)
        yield


def _flush_slice(client: Any) -> bool:
    """One bounded flush; True when the queue emptied within it."""
    pending: list[int] = []
    client.flush(timeout=_FLUSH_SLICE, callback=lambda n, _t: pending.append(n))
    return not pending


def _drain(client: Any, stop: threading.Event) -> None:
    """Flush in short slices until the queue is empty or the caller gave up, then close."""
    while not stop.is_set():
        if _flush_slice(client):
            # timeout 0: no further wait; the transport's worker is told to stop and dropped.
            client.close(timeout=0)
            return
    # Abandoned: the atexit hook closes the client, without waiting (shutdown_timeout is 0).


async def flush_and_close() -> None:
    """Send what is queued and close the client; bound it with a cancel scope.

    The blocking work runs in a thread, so the event loop keeps serving while Sentry is slow.
    When the caller's cancel scope fires, this returns at once and the thread stops within one
    flush slice (0.1 s). Either way sentry-sdk's atexit hook has nothing left to wait for.
    """
    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    # The atexit hook would otherwise flush again for `shutdown_timeout` (2 s) at exit.
    client.options["shutdown_timeout"] = 0
    stop = threading.Event()
    try:
        await trio.to_thread.run_sync(_drain, client, stop, abandon_on_cancel=True)
    finally:
        stop.set()
