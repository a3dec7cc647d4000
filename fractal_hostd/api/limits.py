"""Fixed limits of every API request (contract §5), shared by the app and its OpenAPI document."""

from __future__ import annotations

MAX_BODY_BYTES = 64 * 1024
# A client that has not sent its (at most 64 KiB) body after this long is not a webserver.
BODY_TIMEOUT_SECONDS = 10
