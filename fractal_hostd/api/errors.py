"""Errors a route raises to answer in contract §5's shapes (the app turns them into JSON)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class Unauthorized(ApiError):
    """401, always the same body: it must not tell which part of the credentials was wrong."""

    def __init__(self) -> None:
        super().__init__(401, {"error": "unauthorized"})


class BadRequest(ApiError):
    """400; the message names the bad field and never repeats the value."""

    def __init__(self, message: str) -> None:
        super().__init__(400, {"error": message})


class NotCarriedOut(ApiError):
    """406: the request was valid but could not be carried out."""

    def __init__(self, message: str) -> None:
        super().__init__(406, {"result": None, "error": message})
