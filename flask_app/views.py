"""The contract's routes as a Flask blueprint: read the request, build the response.

Validation, upstream calls, framing and cleanup live in ``shared``; a view here only
translates between Flask and that core.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from shared.config import Settings
from shared.guard import (
    Guard,
    check_host,
    cors_headers,
    http_error,
    method_not_allowed,
)
from shared.pages import JSON_CONTENT_TYPE, asset, health_body, index_page
from shared.streaming import (
    SSE_HEADERS,
    TEXT_HEADERS,
    Opener,
    StreamError,
    sse_frames,
    text_stream,
)
from shared.upstream import Upstream
from shared.validation import (
    json_body,
    messages_from_json,
    prompt_from_query,
    request_body,
)

bp = Blueprint("stream", __name__)

ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
View = Callable[..., Response]  # URL parameters come as keyword arguments


def route(path: str, method: str, *, streaming: bool = True) -> Callable[[View], View]:
    """Mount a view that answers ``method`` only; errors become the contract's JSON.

    Every method reaches the view so that a wrong one gets the same JSON 405 as in
    the Django app; a ``streaming`` route spends the key, so ``shared.guard``'s
    rules apply to it (same site, token or ``authorize``, rate and size limits).
    """

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def guarded(**url_args: str) -> Response:
            guard = _guard()
            origins = guard.cors_origins(streaming)
            try:
                preflight = guard.admit(
                    request._get_current_object(),  # type: ignore[attr-defined]
                    request.method,
                    request.headers,
                    request.remote_addr,
                    method,
                    streaming=streaming,
                )
                if preflight is None:
                    response = view(**url_args)
                else:
                    response = Response(status=204, headers=preflight)
                    del response.headers["Content-Type"]
            except StreamError as error:
                response = _error_response(error)
            response.headers.update(cors_headers(request.headers, origins))
            return response

        guarded.allowed_method = method  # type: ignore[attr-defined]
        bp.add_url_rule(
            path, view_func=guarded, methods=ANY_METHOD, provide_automatic_options=False
        )
        return guarded

    return decorator


def _error_response(error: StreamError) -> Response:
    return Response(
        error.body(), error.status, {**error.headers, "Content-Type": JSON_CONTENT_TYPE}
    )


@bp.before_app_request
def refuse_unknown_host() -> Response | None:
    """A host outside ``FLASK_TRUSTED_HOSTS`` gets 400, as Django's ALLOWED_HOSTS."""
    try:
        check_host(request.environ, current_app.config["ALLOWED_HOSTS"])
    except StreamError as error:
        return _error_response(error)
    return None


@bp.app_errorhandler(HTTPException)
def framework_error(error: HTTPException) -> Response:
    """Werkzeug's own errors as the contract's JSON, as the Django app answers them.

    An unknown path, a method outside ``ANY_METHOD`` (``TRACE``, a made-up one) and
    a body cut off before its ``Content-Length`` never reach a route's view.
    """
    status = error.code or 500
    allowed = _allowed_method() if isinstance(error, MethodNotAllowed) else None
    if allowed is not None:
        return _error_response(method_not_allowed(request.method, [allowed]))
    return _error_response(http_error(status))


def _allowed_method() -> str | None:
    """The one method of the route at this path (every route also takes OPTIONS)."""
    try:
        endpoint, _ = current_app.url_map.bind_to_environ(request.environ).match(
            method="OPTIONS"
        )
    except HTTPException:
        return None
    view = current_app.view_functions.get(endpoint)
    return getattr(view, "allowed_method", None)


def _settings() -> Settings:
    settings: Settings = current_app.config["STREAM_SETTINGS"]
    return settings


def _guard() -> Guard:
    guard: Guard = current_app.extensions["stream_guard"]
    return guard


def _upstream() -> Upstream:
    upstream: Upstream = current_app.extensions["upstream"]
    return upstream


def _sse(opener: Opener) -> Response:
    return Response(
        sse_frames(
            opener,
            keepalive_seconds=_settings().keepalive_seconds,
            client_socket=_client_socket(),
        ),
        headers=SSE_HEADERS,
    )


def _client_socket() -> Any:
    environ = request.environ
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def _json() -> dict[str, Any]:
    body = request_body(request.environ, _settings().max_body_bytes)
    return json_body(body, request.content_type)


def _prompt() -> str:
    query = request.environ.get("QUERY_STRING", "")
    return prompt_from_query(query, _settings().max_prompt_chars)


@route("/", "GET", streaming=False)
def index() -> Response:
    """The demo page."""
    body, headers = index_page()
    return Response(body, headers=headers)


@route("/assets/<name>", "GET", streaming=False)
def page_asset(name: str) -> Response:
    """The demo page's script and style."""
    body, headers = asset(name)
    return Response(body, headers=headers)


@route("/healthz", "GET", streaming=False)
def healthz() -> Response:
    """Liveness, and which upstream answers (the page shows it)."""
    return Response(
        health_body(_settings()), headers={"Content-Type": JSON_CONTENT_TYPE}
    )


@route("/completion", "GET")
def completion() -> Response:
    """Stream a legacy completion for ``?prompt=`` as Server-Sent Events."""
    prompt = _prompt()
    return _sse(_upstream().completion_opener(prompt))


@route("/completionChat", "GET")
def completion_chat() -> Response:
    """Stream one chat completion for ``?prompt=`` as Server-Sent Events."""
    prompt = _prompt()
    return _sse(_upstream().chat_opener([{"role": "user", "content": prompt}]))


@route("/completions/chat", "POST")
def completions_chat() -> Response:
    """Stream a chat completion for a JSON ``prompt`` or ``messages`` as SSE."""
    messages = messages_from_json(_json(), "prompt", _settings().max_prompt_chars)
    return _sse(_upstream().chat_opener(messages))


@route("/api/stream", "POST")
def api_stream() -> Response:
    """Stream a chat answer for a JSON ``message`` or ``messages`` as raw text."""
    messages = messages_from_json(_json(), "message", _settings().max_prompt_chars)
    body = text_stream(
        _upstream().chat_opener(messages), client_socket=_client_socket()
    )
    return Response(body, headers=TEXT_HEADERS)
