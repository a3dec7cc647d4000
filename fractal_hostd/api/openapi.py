"""The OpenAPI 3.1 description of the HTTPS API, served at `GET /openapi.json`.

Written by hand from contract §5 (the routes carry no schema annotations to derive it from).
It must tell the truth both ways, and two tests hold it to that: one checks that it lists
exactly the app's routes and methods; a bounded schemathesis run
(tests/test_openapi_schemathesis.py) sends what the document allows and what it forbids to
the served app and checks every answer against it. So every rule of `validation.py` is
stated here with the same constants (numbers are JSON Schema `integer`s, which admit `96.0`,
as the server does; text rules are `pattern`s the server applies verbatim), and every error
answer a route can give is listed.

Not expressible per operation, so described in `info` and `components.responses`: 404 for
an unknown path, 405 (with `Allow`) for a method a path does not serve. Lone UTF-16
surrogates (`"\\ud800"`) in any string are refused with 400: JSON Schema cannot say so.
"""

from __future__ import annotations

import copy
from typing import Any

from fractal_hostd.api.limits import BODY_TIMEOUT_SECONDS, MAX_BODY_BYTES
from fractal_hostd.api.validation import (
    MAX_ARN,
    MAX_DPI,
    MAX_REASON,
    MAX_STRING,
    MAX_TOKEN,
    MIN_DPI,
    NO_NUL_PATTERN,
    ONE_LINE_PATTERN,
    PRINTABLE_ASCII_PATTERN,
    PROVIDERS,
)

_HOST_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_DPI = {"type": "integer", "minimum": MIN_DPI, "maximum": MAX_DPI}
_AUTH_SECRET = {
    "type": "string",
    "deprecated": True,
    "writeOnly": True,
    "description": (
        "Legacy: the shared secret in the body, the original webserver's way. Prefer the "
        "`Authorization: Bearer` header. Every credential presented must be right: a wrong "
        "`auth_secret` is refused (401) even next to a right header."
    ),
}


def _ascii_line(max_length: int) -> dict[str, Any]:
    """Written into a file or an rclone config: printable ASCII, non-empty."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": PRINTABLE_ASCII_PATTERN,
    }


def _optional_string(max_length: int, pattern: str = NO_NUL_PATTERN) -> dict[str, Any]:
    """Absent, null and (for these fields) "" all mean "not given"."""
    return {"type": ["string", "null"], "maxLength": max_length, "pattern": pattern}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# Every authenticated route reads the body (if any) before checking credentials, so each
# can answer 400 (a body that is not a JSON object), 408 and 413, and 401.
_REQUEST_ERRORS = {
    "400": _error("Malformed JSON, not an object, or an invalid field (named in `error`)."),
    "401": _error("Missing or wrong credentials (always `unauthorized`)."),
    "408": _error(f"The body did not arrive within {BODY_TIMEOUT_SECONDS} s."),
    "413": _error(f"Body over {MAX_BODY_BYTES // 1024} KiB."),
}
_NOT_CARRIED_OUT = {
    "406": _json(
        "Valid, but could not be carried out (no such container, host draining, mount failed).",
        {"$ref": "#/components/schemas/NotCarriedOut"},
    ),
}
_ERRORS_WITH_BODY = {**_REQUEST_ERRORS, **_NOT_CARRIED_OUT}


def _body(
    properties: dict[str, Any], required: list[str], *, required_body: bool = True
) -> dict[str, Any]:
    return {
        "required": required_body,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {**properties, "auth_secret": _AUTH_SECRET},
                    "required": required,
                    "additionalProperties": True,
                }
            }
        },
    }


_CONTAINER_RESULT = _json(
    "Written; `.ready` is the last file written.",
    {
        "type": "object",
        "properties": {"result": {"$ref": "#/components/schemas/Container"}},
        "required": ["result"],
    },
)

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "fractal_hostd host API",
        "version": "1",
        "description": (
            "HTTPS API of a Fractal GPU host (self-signed certificate, TLS 1.2+). Besides the "
            'answers listed per operation: 404 `{"error": "not found"}` for an unknown '
            'path and 405 `{"error": "method not allowed"}` with an `Allow` header for a '
            "method a path does not serve (components.responses). Strings with lone UTF-16 "
            "surrogates or NUL characters are refused with 400."
        ),
    },
    # The original webserver's way, an `auth_secret` body field, is not expressible as a
    # security scheme: it is listed in each request body instead.
    "security": [{"bearer": []}],
    "paths": {
        "/health": {
            "get": {
                "summary": "Liveness: answers while the service runs.",
                "security": [],
                "responses": {
                    "200": _json(
                        "Running.",
                        {
                            "type": "object",
                            "properties": {
                                "status": {"const": "ok"},
                                "checks": {"$ref": "#/components/schemas/Checks"},
                            },
                            "required": ["status", "checks"],
                        },
                    )
                },
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: 200 only when this host can take containers now.",
                "security": [],
                "responses": {
                    "200": _json(
                        "Ready.",
                        {
                            "type": "object",
                            "properties": {
                                "result": {"const": "ready"},
                                "checks": {"$ref": "#/components/schemas/Checks"},
                            },
                            "required": ["result", "checks"],
                        },
                    ),
                    "503": _json(
                        "Not ready; `failing` names the checks that fail.",
                        {
                            "type": "object",
                            "properties": {
                                "error": {"type": "string"},
                                "failing": {
                                    "type": "array",
                                    "items": {
                                        "enum": ["startup", "docker", "reconcile", "draining"]
                                    },
                                },
                                "checks": {"$ref": "#/components/schemas/Checks"},
                            },
                            "required": ["error", "failing", "checks"],
                        },
                    ),
                },
            }
        },
        "/drain": {
            "post": {
                "summary": "Make the host drain, as a spot notice does; idempotent.",
                "requestBody": _body(
                    {"reason": _optional_string(MAX_REASON, ONE_LINE_PATTERN)},
                    [],
                    required_body=False,
                ),
                "responses": {
                    "200": _json(
                        "Draining (now or already).",
                        {
                            "type": "object",
                            "properties": {
                                "result": {
                                    "type": "object",
                                    "properties": {
                                        "draining": {"$ref": "#/components/schemas/Draining"},
                                        "already_draining": {"type": "boolean"},
                                    },
                                    "required": ["draining", "already_draining"],
                                }
                            },
                            "required": ["result"],
                        },
                    ),
                    **_REQUEST_ERRORS,
                },
            }
        },
        "/status": {
            "get": {
                "summary": "Host state: metadata, draining, Docker, containers, heartbeat.",
                "responses": {
                    "200": _json("The state.", {"$ref": "#/components/schemas/Status"}),
                    **_REQUEST_ERRORS,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition.",
                "responses": {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_REQUEST_ERRORS,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {
                    "200": _json("OpenAPI 3.1 document.", {"type": "object"}),
                    **_REQUEST_ERRORS,
                },
            }
        },
        "/set_container_dpi": {
            "put": {
                "summary": "Write the container's DPI, then `.ready`.",
                "requestBody": _body({"host_port": _HOST_PORT, "dpi": _DPI}, ["host_port", "dpi"]),
                "responses": {"200": _CONTAINER_RESULT, **_ERRORS_WITH_BODY},
            }
        },
        "/set_container_start_values": {
            "put": {
                "summary": "Write DPI and ContainerARN, then `.ready`.",
                "requestBody": _body(
                    {
                        "host_port": _HOST_PORT,
                        "dpi": _DPI,
                        "user_id": _optional_string(MAX_STRING),
                        "container_ARN": _optional_string(MAX_ARN, PRINTABLE_ASCII_PATTERN),
                        "client_app_auth_secret": _optional_string(MAX_STRING),
                    },
                    ["host_port", "dpi"],
                ),
                "responses": {"200": _CONTAINER_RESULT, **_ERRORS_WITH_BODY},
            }
        },
        "/mount_cloud_storage": {
            "post": {
                "summary": "Mount the provider for the container; answers once it is live.",
                "requestBody": _body(
                    {
                        "host_port": _HOST_PORT,
                        "provider": {"type": "string", "enum": list(PROVIDERS)},
                        "access_token": _ascii_line(MAX_TOKEN),
                        "refresh_token": _ascii_line(MAX_TOKEN),
                        "expiry": _ascii_line(64),
                        "token_type": _ascii_line(64),
                        "client_id": _optional_string(MAX_STRING),
                        "client_secret": _optional_string(MAX_STRING),
                    },
                    [
                        "host_port",
                        "provider",
                        "access_token",
                        "refresh_token",
                        "expiry",
                        "token_type",
                    ],
                ),
                "responses": {
                    "200": _json(
                        "Mounted.",
                        {
                            "type": "object",
                            "properties": {
                                "result": {
                                    "type": "object",
                                    "properties": {
                                        "host_port": _HOST_PORT,
                                        "provider": {"type": "string"},
                                        "mount_point": {"type": "string"},
                                    },
                                }
                            },
                        },
                    ),
                    **_ERRORS_WITH_BODY,
                },
            }
        },
    },
    "components": {
        "responses": {
            "NotFound": _error("No such path."),
            "MethodNotAllowed": {
                **_error("The path does not serve this method."),
                "headers": {
                    "Allow": {
                        "description": "The methods the path serves.",
                        "schema": {"type": "string"},
                    }
                },
            },
        },
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            },
            "NotCarriedOut": {
                "type": "object",
                "properties": {"result": {"type": "null"}, "error": {"type": "string"}},
                "required": ["result", "error"],
            },
            "Checks": {
                "type": "object",
                "properties": {
                    "started": {"type": "boolean"},
                    "docker_connected": {"type": "boolean"},
                    "last_reconcile_age_seconds": {"type": ["number", "null"]},
                    "event_lag_seconds": {"type": ["number", "null"]},
                    "pending_file_writes": {"type": "integer"},
                    "draining": {"type": "boolean"},
                },
                "required": [
                    "started",
                    "docker_connected",
                    "last_reconcile_age_seconds",
                    "event_lag_seconds",
                    "pending_file_writes",
                    "draining",
                ],
            },
            "Draining": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["spot", "rebalance", "operator"]},
                    "action": {"type": ["string", "null"]},
                    "time": {"type": "string"},
                    "seen_at": {"type": "string"},
                    "reason": {"type": ["string", "null"]},
                },
                "required": ["kind", "action", "time", "seen_at", "reason"],
            },
            "Container": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "host_port": _HOST_PORT,
                    "tty": {"type": ["integer", "null"]},
                    "dpi": {"type": ["integer", "null"]},
                    "container_arn": {"type": ["string", "null"]},
                    "ready": {"type": "boolean"},
                    "files_pending": {"type": "boolean"},
                    "cloud_storage": {"type": "array", "items": {"type": "string"}},
                },
            },
            "Status": {
                "type": "object",
                "properties": {
                    "version": {"type": "string"},
                    "environment": {"type": "string"},
                    "api_url": {"type": ["string", "null"]},
                    "metadata": {"type": ["object", "null"]},
                    "draining": {
                        "oneOf": [{"$ref": "#/components/schemas/Draining"}, {"type": "null"}]
                    },
                    "started_at": {"type": ["string", "null"]},
                    "docker": {
                        "type": "object",
                        "properties": {
                            "connected": {"type": "boolean"},
                            "events_processed": {"type": "integer"},
                            "reconnects": {"type": "integer"},
                            "last_event_lag_seconds": {"type": ["number", "null"]},
                            "last_reconcile_at": {"type": ["string", "null"]},
                            "last_reconcile_duration_seconds": {"type": ["number", "null"]},
                            "reconcile_failures": {"type": "integer"},
                        },
                    },
                    "pending_file_writes": {"type": "integer"},
                    "containers": {
                        "type": "array",
                        "items": {
                            "allOf": [
                                {"$ref": "#/components/schemas/Container"},
                                {
                                    "type": "object",
                                    "properties": {
                                        "history": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Transition"},
                                        }
                                    },
                                    "required": ["history"],
                                },
                            ]
                        },
                    },
                    "recently_gone": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "host_port": {"type": ["integer", "null"]},
                                "transitions": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Transition"},
                                },
                            },
                            "required": ["id", "host_port", "transitions"],
                        },
                    },
                    "recent_errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "at": {"type": "string"},
                                "level": {"type": "string"},
                                "logger": {"type": "string"},
                                "message": {"type": "string"},
                            },
                            "required": ["at", "level", "logger", "message"],
                        },
                    },
                    "free_ttys": {"type": "integer"},
                    "last_heartbeat": {"type": ["object", "null"]},
                },
            },
            "Transition": {
                "type": "object",
                "properties": {
                    "at": {"type": "string"},
                    "event": {"type": "string"},
                    "detail": {"type": "string"},
                },
                "required": ["at", "event"],
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_DOCUMENT)
