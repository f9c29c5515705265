"""Django's own errors (unknown path, bad host, malformed request) as contract JSON.

Mounted as ``handler400``/``403``/``404``/``500`` in ``urls.py`` (used when
``DEBUG`` is off), and ``refuse_too_many_fields`` around the WSGI application.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
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


def refuse_too_many_fields(application: Any) -> Any:
    """Answer a query string of too many fields with a 400 before Django sees it.

    Django refuses more than ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` with a 400, except
    when the request's ``Content-Type`` names a charset: then building the request
    parses the query, outside every handler, and the server answers 500 with a
    traceback in its log (Django 5.2). The count is ``parse_qsl``'s: one more than
    the ``&``.
    """

    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        if limit is not None and environ.get("QUERY_STRING", "").count("&") >= limit:
            start_response("400 Bad Request", [("Content-Type", JSON_CONTENT_TYPE)])
            return [http_error(400).body()]
        return application(environ, start_response)  # type: ignore[no-any-return]

    return guarded
