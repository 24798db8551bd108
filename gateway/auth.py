"""API keys: one check for REST (`Authorization` header) and gRPC (`authorization` metadata)."""

from __future__ import annotations

import hmac

from nextgpt.errors import Unauthenticated

SCHEME = "Bearer "


def authorize(api_keys: list[str], authorization: str | None) -> None:
    """Raise `Unauthenticated` unless `authorization` is "Bearer KEY" with a configured key; with no keys
    configured everything is allowed. Keys are compared in constant time."""
    if not api_keys:
        return
    sent = authorization or ""
    key = sent[len(SCHEME) :] if sent.startswith(SCHEME) else ""
    if not key or not any(hmac.compare_digest(key.encode(), k.encode()) for k in api_keys):
        raise Unauthenticated("missing or wrong API key: send the header Authorization: Bearer KEY")


def is_authorized(api_keys: list[str], authorization: str | None) -> bool:
    try:
        authorize(api_keys, authorization)
    except Unauthenticated:
        return False
    return True
