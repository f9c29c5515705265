"""Django's own errors (unknown path, bad host, malformed request) as contract JSON.

Mounted as ``handler400``/``403``/``404``/``500`` in ``urls.py`` (used when
``DEBUG`` is off).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from shared.guard import http_error
from shared.pages import JSON_CONTENT_TYPE
from shared.streaming import StreamError


def json_error(error: StreamError) -> HttpResponse:
    """The contract's JSON error response, with the error's own headers."""
    return HttpResponse(
        error.body(),
        status=error.status,
        content_type=JSON_CONTENT_TYPE,
        headers=error.headers,
    )


def _answer(status: int) -> HttpResponse:
    return json_error(http_error(status))


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _answer(400)


def forbidden(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _answer(403)


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    return _answer(404)


def server_error(request: HttpRequest) -> HttpResponse:
    return _answer(500)
