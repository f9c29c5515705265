"""Errors as the contract's JSON: the views' own, and Werkzeug's (unknown path,
wrong method, malformed request), as the Django project answers them.
"""

from __future__ import annotations

from flask import Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from shared.guard import http_error, method_not_allowed
from shared.pages import JSON_CONTENT_TYPE
from shared.streaming import StreamError

# Werkzeug lists them for every rule; no route of the app answers HEAD, and OPTIONS
# is in every Allow header anyway.
_IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


def json_error(error: StreamError) -> Response:
    """The contract's JSON error response, with the error's own headers."""
    return Response(
        error.body(), error.status, {**error.headers, "Content-Type": JSON_CONTENT_TYPE}
    )


def framework_error(error: HTTPException) -> Response:
    """Werkzeug's own errors, which never reach a view, as the contract's JSON.

    A 405 names the route's method, as the Django project's views do.
    """
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        allowed = sorted(set(error.valid_methods) - _IMPLICIT_METHODS)
        return json_error(method_not_allowed(request.method, allowed))
    return json_error(http_error(error.code or 500))
