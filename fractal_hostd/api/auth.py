"""The shared-secret check of contract §5: a Bearer header or an `auth_secret` body field.

Rule: at least one credential must be presented, and every credential presented must be
right. A wrong header is not rescued by a right body field (or the reverse): a request that
carries a wrong secret anywhere is someone guessing, and is refused whole.

Comparison is `hmac.compare_digest` on bytes, so its time does not depend on how much of the
secret matched. The secret is held as bytes only and never logged; callers answer every
failure with the same 401 body, so a failure says nothing about which part was wrong.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Any

BODY_FIELD = "auth_secret"


class Authenticator:
    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the API secret must not be empty")
        self._secret = secret.encode("utf-8")

    def __repr__(self) -> str:
        return "Authenticator(<secret>)"

    def is_authorized(self, authorization: Sequence[str], body: Mapping[str, Any] | None) -> bool:
        """`authorization` holds the raw Authorization header values (usually none or one);
        `body` is the request's JSON object, if it had one."""
        presented: list[bytes | None] = [_bearer_token(header) for header in authorization]
        if body is not None and BODY_FIELD in body:
            presented.append(_body_secret(body[BODY_FIELD]))
        if not presented:
            return False
        # Compare every credential (no short-circuit), then require all of them to match.
        results = [self._matches(candidate) for candidate in presented]
        return all(results)

    def _matches(self, candidate: bytes | None) -> bool:
        if candidate is None:
            return False
        return hmac.compare_digest(candidate, self._secret)


def _bearer_token(header: str) -> bytes | None:
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        # HTTP header values arrive decoded as Latin-1: this recovers the bytes on the wire.
        return token.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _body_secret(value: object) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    # surrogatepass: a lone surrogate from JSON must fail the comparison, not raise.
    return value.encode("utf-8", "surrogatepass")
