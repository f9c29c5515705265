"""Who may call a streaming route, how often, with what: the access rules.

A browser on another site must not spend the key: a request it marks
``Sec-Fetch-Site: cross-site``, or whose ``Origin`` names another host, is refused
with 403 before any upstream call, unless the origin is listed in
``STREAM_CORS_ORIGINS``. Together with JSON-only POST bodies (a cross-site form can't
send ``application/json`` without a CORS preflight), this is the apps' CSRF defence.
Clients that are not browsers send neither header and are served.

The ``Origin`` is compared with the ``Host`` header by host and port only: behind a
TLS-terminating proxy the app sees ``http`` while the browser says ``https``.

Off by default, each opt-in: a bearer token (``STREAM_AUTH_TOKEN``) or any check of
the app's own (``authorize``, e.g. "signed in"), a per-client rate limit
(``STREAM_RATE_LIMIT``). The body size limit is always on: a body over it is refused
from its ``Content-Length`` alone, before it is read.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from shared.config import Settings
from shared.pages import JSON_CONTENT_TYPE
from shared.ratelimit import RateLimiter
from shared.streaming import (
    Headers,
    StreamError,
    check_body_size,
    check_site,
)
from shared.streaming import method_not_allowed as refuse_method

# The app's own check: given the framework's request, may it spend the key?
Authorize = Callable[[Any], bool]

# Sent on every response of both apps, so that they answer with the same headers.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
PREFLIGHT_MAX_AGE_SECONDS = 600
# Django's DATA_UPLOAD_MAX_NUMBER_FIELDS default; the Flask app keeps it too.
MAX_QUERY_FIELDS = 1000
# Django's host_validation_re: a name or IPv4 address, or an IPv6 one, then a port.
_HOST = re.compile(r"([a-z0-9.-]+|\[[a-f0-9]*:[a-f0-9.:]+\])(?::[0-9]+)?")


def method_not_allowed(method: str, allowed: Collection[str]) -> StreamError:
    """405 for ``method``; ``Allow`` names ``allowed`` and OPTIONS (every route's)."""
    error = refuse_method(method, allowed)
    error.headers["Allow"] = ", ".join([*allowed, "OPTIONS"])
    return error


# What the contract's JSON says for errors the framework or server raises itself.
_HTTP_ERRORS = {
    400: ("The request is malformed.", "invalid_request_error"),
    403: ("This request is not allowed.", "forbidden"),
    404: ("There is nothing at this path.", "not_found"),
    405: ("This method is not allowed here.", "method_not_allowed"),
    413: ("The request is too large.", "payload_too_large"),
    500: ("The server failed; the failure is logged.", "server_error"),
}


def http_error(status: int) -> StreamError:
    """A framework's own error (unknown path, malformed request) as contract JSON."""
    message, kind = _HTTP_ERRORS.get(status, ("The request failed.", "http_error"))
    return StreamError(status, message, kind)


def check_host(environ: Mapping[str, Any], allowed_hosts: Collection[str]) -> None:
    """Refuse a request for a host name the server doesn't answer to, with 400.

    ``check_site`` trusts ``Host``: a page whose name its owner points at this
    server (DNS rebinding) sends a matching ``Host`` and ``Origin``. Django's
    ``ALLOWED_HOSTS`` rules, for the Flask app: port and case are ignored,
    ``.example.com`` also allows its subdomains, ``*`` any valid name. Not
    Werkzeug's ``TRUSTED_HOSTS``: it never matches ``[::1]``, nor ``LOCALHOST``.
    """
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or ""
    match = _HOST.fullmatch(host.lower())
    name = match.group(1).removesuffix(".") if match else ""
    if not name or not any(_host_matches(name, p.lower()) for p in allowed_hosts):
        raise http_error(400)


def _host_matches(name: str, pattern: str) -> bool:
    if pattern.startswith("."):
        return name.endswith(pattern) or name == pattern[1:]
    return pattern in ("*", name)


def refuse_too_many_fields(application: Any, limit: int | None) -> Any:
    """Wrap a WSGI app: a query string of over ``limit`` fields gets a 400 JSON error.

    The same answer from both apps, before either parses the query. Django refuses
    too many fields itself, but when the request's ``Content-Type`` names a
    charset, building the request parses the query outside every handler, and the
    server answers 500 with a traceback in its log (Django 5.2). The count is
    ``parse_qsl``'s: one more than the ``&``.
    """

    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if limit is not None and environ.get("QUERY_STRING", "").count("&") >= limit:
            body = http_error(400).body()
            start_response(
                "400 Bad Request",
                [
                    ("Content-Type", JSON_CONTENT_TYPE),
                    ("Content-Length", str(len(body))),
                    *SECURITY_HEADERS.items(),
                ],
            )
            return [body]
        return application(environ, start_response)  # type: ignore[no-any-return]

    return guarded


# What a listed origin's page may send: a JSON body, a token, and where to resume.
ALLOWED_REQUEST_HEADERS = "Content-Type, Authorization, Last-Event-ID"


def cors_headers(headers: Headers, cors_origins: Collection[str]) -> dict[str, str]:
    """CORS headers for a listed origin; none at all when nothing is listed."""
    origin = headers.get("Origin")
    if origin is None or origin not in cors_origins:
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        # A resumable answer's id, which the page needs to resume or stop it.
        "Access-Control-Expose-Headers": "X-Stream-Id",
    }


def preflight_headers(
    headers: Headers, allowed: Collection[str], cors_origins: Collection[str]
) -> dict[str, str]:
    """Answer to ``OPTIONS``: ``Allow``, plus a CORS preflight for a listed origin."""
    reply = {"Allow": ", ".join([*allowed, "OPTIONS"])}
    cors = cors_headers(headers, cors_origins)
    if cors and headers.get("Access-Control-Request-Method"):
        reply |= cors | {
            "Access-Control-Allow-Methods": ", ".join(allowed),
            "Access-Control-Allow-Headers": ALLOWED_REQUEST_HEADERS,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
        }
    return reply


def check_token(headers: Headers, token: str) -> None:
    """Require ``Authorization: Bearer <token>``; refuse anything else with 401."""
    scheme, _, given = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise _unauthorized("Send the server's token as 'Authorization: Bearer …'.")


def _unauthorized(message: str) -> StreamError:
    return StreamError(
        401, message, "unauthorized", {"WWW-Authenticate": 'Bearer realm="stream"'}
    )


class Guard:
    """One app's access rules, applied the same way by the Flask and Django views.

    It holds the rate limiter's counters, so an app makes one at start and keeps it.
    """

    def __init__(self, settings: Settings, authorize: Authorize | None = None) -> None:
        self.settings = settings
        self._authorize = authorize
        self._limiter = (
            RateLimiter(settings.rate_limit, settings.redis_url)
            if settings.rate_limit
            else None
        )

    def cors_origins(self, streaming: bool) -> Collection[str]:
        """Origins allowed to call from another site; none for the page's routes."""
        return self.settings.cors_origins if streaming else ()

    def admit(
        self,
        request: Any,
        method: str,
        headers: Headers,
        client: str | None,
        allowed: str,
        *,
        streaming: bool = True,
    ) -> dict[str, str] | None:
        """Apply a route's rules before its view runs.

        ``method`` is ``allowed`` or ``OPTIONS``: each framework's routing refused
        any other (405) before. ``request`` is the framework's, for ``authorize``;
        ``client`` the address the rate limit counts by. Returns the headers of the
        ``204`` answer to ``OPTIONS``, or ``None`` when the view may run; raises
        :class:`StreamError` (403, 401, 429, 413) to refuse the request. Only the
        streaming routes spend the key: the page, its assets and ``/healthz`` are
        open to all.
        """
        if method == "OPTIONS":
            return preflight_headers(headers, [allowed], self.cors_origins(streaming))
        if not streaming:
            return None
        check_site(headers, self.settings.cors_origins)
        if self.settings.auth_token is not None:
            check_token(headers, self.settings.auth_token)
        if self._authorize is not None and not self._authorize(request):
            raise _unauthorized("Sign in to use this endpoint.")
        if self._limiter is not None:
            self._limiter.check(client or "unknown")
        check_body_size(headers.get("Content-Length"), self.settings.max_body_bytes)
        return None
