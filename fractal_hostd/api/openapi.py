"""The OpenAPI 3.1 description of the HTTPS API, served at `GET /openapi.json`.

Written by hand from contract §5 (the routes carry no schema annotations to derive it from);
a test checks that it lists exactly the app's routes and methods, so the two cannot drift.
"""

from __future__ import annotations

import copy
from typing import Any

from fractal_hostd.api.validation import MAX_ARN, MAX_DPI, MAX_STRING, MAX_TOKEN, MIN_DPI, PROVIDERS

_HOST_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_DPI = {"type": "integer", "minimum": MIN_DPI, "maximum": MAX_DPI}
_AUTH_SECRET = {
    "type": "string",
    "description": "The shared secret, as an alternative to the Authorization header.",
}


def _string(max_length: int, min_length: int = 1) -> dict[str, Any]:
    return {"type": "string", "minLength": min_length, "maxLength": max_length}


def _optional_string(max_length: int) -> dict[str, Any]:
    return {"type": ["string", "null"], "maxLength": max_length}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS_WITH_BODY = {
    "400": _error("Malformed JSON or an invalid field (named in `error`)."),
    "401": _error("Missing or wrong credentials."),
    "406": _json(
        "Valid, but could not be carried out.",
        {"$ref": "#/components/schemas/NotCarriedOut"},
    ),
    "413": _error("Body over 64 KiB."),
}
_ERRORS_NO_BODY = {
    "401": _error("Missing or wrong credentials."),
}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
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
        "description": "HTTPS API of a Fractal GPU host (self-signed certificate, TLS 1.2+).",
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
                        {"type": "object", "properties": {"status": {"const": "ok"}}},
                    )
                },
            }
        },
        "/status": {
            "get": {
                "summary": "Host state: metadata, draining, Docker, containers, heartbeat.",
                "responses": {
                    "200": _json("The state.", {"$ref": "#/components/schemas/Status"}),
                    **_ERRORS_NO_BODY,
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
                    **_ERRORS_NO_BODY,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {
                    "200": _json("OpenAPI 3.1 document.", {"type": "object"}),
                    **_ERRORS_NO_BODY,
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
                        "container_ARN": _optional_string(MAX_ARN),
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
                        "access_token": _string(MAX_TOKEN),
                        "refresh_token": _string(MAX_TOKEN),
                        "expiry": _string(64),
                        "token_type": _string(64),
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
                    "draining": {"type": ["object", "null"]},
                    "docker": {"type": "object"},
                    "containers": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Container"},
                    },
                    "free_ttys": {"type": "integer"},
                    "pending_file_writes": {"type": "integer"},
                    "last_heartbeat": {"type": ["object", "null"]},
                },
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_DOCUMENT)
