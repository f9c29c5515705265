"""Response headers as the Flask app sends them (see ``shared.guard``)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from shared.guard import SECURITY_HEADERS


def response_headers(
    get_response: Callable[[HttpRequest], HttpResponseBase],
) -> Callable[[HttpRequest], HttpResponseBase]:
    """Add the shared security headers; ``Content-Length`` on every body but a 204.

    ``CommonMiddleware`` sets ``Content-Length: 0`` on every body, a 204 included,
    where RFC 9110 says a server must not send one; and none at all on its own
    refusal of a ``Host`` outside ``ALLOWED_HOSTS``, which the Flask app sends
    with one.
    """

    def middleware(request: HttpRequest) -> HttpResponseBase:
        response = get_response(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if isinstance(response, HttpResponse):
            response.headers.setdefault("Content-Length", str(len(response.content)))
        if response.status_code == 204 and "Content-Length" in response.headers:
            del response.headers["Content-Length"]
        return response

    return middleware
