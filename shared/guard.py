"""Who may call a streaming route, with which method: the contract's access rules.

A browser on another site must not spend the key: a request it marks
``Sec-Fetch-Site: cross-site``, or whose ``Origin`` names another host, is refused
with 403 before any upstream call, unless the origin is listed in
``STREAM_CORS_ORIGINS``. Together with JSON-only POST bodies (a cross-site form can't
send ``application/json`` without a CORS preflight), this is the apps' CSRF defence.
Clients that are not browsers send neither header and are served.

The ``Origin`` is compared with the ``Host`` header by host and port only: behind a
TLS-terminating proxy the app sees ``http`` while the browser says ``https``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol
from urllib.parse import urlsplit

from shared.streaming import StreamError

# Sent on every response of both apps, so that they answer with the same headers.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
PREFLIGHT_MAX_AGE_SECONDS = 600


class Headers(Protocol):
    """Request headers, looked up case-insensitively (Flask's and Django's alike)."""

    def get(self, key: str, /) -> str | None: ...


def check_method(method: str, allowed: Collection[str]) -> None:
    """Refuse any other method with 405 and an ``Allow`` header."""
    if method not in allowed:
        raise StreamError(
            405,
            f"Use {' or '.join(allowed)} here, got {method!r}.",
            "method_not_allowed",
            {"Allow": ", ".join([*allowed, "OPTIONS"])},
        )


def check_site(headers: Headers, cors_origins: Collection[str]) -> None:
    """Refuse a request from another site with 403, before any upstream call."""
    origin = headers.get("Origin")
    if origin is not None and origin in cors_origins:
        return
    if headers.get("Sec-Fetch-Site") == "cross-site" or (
        origin is not None and not _same_host(origin, headers.get("Host") or "")
    ):
        raise StreamError(
            403,
            "Cross-site requests may not use this endpoint; list the origin in "
            "STREAM_CORS_ORIGINS to allow it.",
            "cross_site_request",
        )


def _same_host(origin: str, host: str) -> bool:
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.lower()


def cors_headers(headers: Headers, cors_origins: Collection[str]) -> dict[str, str]:
    """CORS headers for a listed origin; none at all when nothing is listed."""
    origin = headers.get("Origin")
    if origin is None or origin not in cors_origins:
        return {}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight_headers(
    headers: Headers, allowed: Collection[str], cors_origins: Collection[str]
) -> dict[str, str]:
    """Answer to ``OPTIONS``: ``Allow``, plus a CORS preflight for a listed origin."""
    reply = {"Allow": ", ".join([*allowed, "OPTIONS"])}
    cors = cors_headers(headers, cors_origins)
    if cors and headers.get("Access-Control-Request-Method"):
        reply |= cors | {
            "Access-Control-Allow-Methods": ", ".join(allowed),
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
        }
    return reply


def admit(
    method: str,
    headers: Headers,
    allowed: str,
    cors_origins: Collection[str],
    *,
    same_site: bool = True,
) -> dict[str, str] | None:
    """Apply a route's rules before its view runs, the same way in both apps.

    Returns the headers of the ``204`` answer to ``OPTIONS``, or ``None`` when the
    view may run; raises :class:`StreamError` (405, 403) to refuse the request.
    """
    if method == "OPTIONS":
        return preflight_headers(headers, [allowed], cors_origins)
    check_method(method, [allowed])
    if same_site:
        check_site(headers, cors_origins)
    return None
