"""The contract's routes as a Flask blueprint: read the request, build the response.

Validation, upstream calls, framing and cleanup live in ``shared``; a view here only
translates between Flask and that core.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed

from flask_app.errors import json_error
from shared.config import Settings
from shared.environ import json_object, query_prompt, ui_messages
from shared.guard import Guard, cors_headers
from shared.pages import (
    JSON_CONTENT_TYPE,
    asset,
    health_body,
    index_page,
    use_chat_file,
)
from shared.streaming import (
    SSE_HEADERS,
    TEXT_HEADERS,
    StreamError,
    client_socket_of,
    sse_frames,
    text_stream,
)
from shared.ui_message_stream import UI_MESSAGE_STREAM_HEADERS, ui_message_stream
from shared.upstream import Answer, Upstream
from shared.validation import messages_from_json

bp = Blueprint("stream", __name__)

View = Callable[..., Response]  # URL parameters come as keyword arguments


def _settings() -> Settings:
    settings: Settings = current_app.config["STREAM_SETTINGS"]
    return settings


def _upstream() -> Upstream:
    upstream: Upstream = current_app.extensions["upstream"]
    return upstream


def _guard() -> Guard:
    guard: Guard = current_app.extensions["stream_guard"]
    return guard


def route(path: str, method: str, *, streaming: bool = True) -> Callable[[View], View]:
    """Mount a view at ``path`` for ``method``, and ``OPTIONS`` for the preflight.

    Werkzeug answers any other method with 405, which ``flask_app.errors`` writes
    as JSON; HEAD, which Werkzeug adds to every GET rule, is refused below.
    """

    def decorator(view: View) -> View:
        guarded_view = guarded(method, streaming=streaming)(view)
        bp.add_url_rule(
            path,
            view_func=guarded_view,
            methods=[method, "OPTIONS"],
            provide_automatic_options=False,
        )
        return guarded_view

    return decorator


@bp.before_request
def refuse_head() -> None:
    """Refuse HEAD with 405, as the Django project does: it would start a completion."""
    rule = request.url_rule
    if request.method == "HEAD" and rule is not None:
        raise MethodNotAllowed(rule.methods)


def guarded(method: str, *, streaming: bool = True) -> Callable[[View], View]:
    """Answer ``method`` and its preflight; errors become the contract's JSON.

    A ``streaming`` route spends the key, so ``shared.guard``'s rules apply to it
    (same site, token or ``authorize``, rate and size limits).
    """

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def guarded_view(**url_args: str) -> Response:
            guard = _guard()
            origins = guard.cors_origins(streaming)
            try:
                preflight = guard.admit(
                    request,
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
                response = json_error(error)
            response.headers.update(cors_headers(request.headers, origins))
            return response

        return guarded_view

    return decorator


def _sse(answer: Answer) -> Response:
    body = sse_frames(
        answer.opener,
        tools=answer.tools,
        follow_up=answer.follow_up,
        keepalive_seconds=_settings().keepalive_seconds,
        client_socket=client_socket_of(request.environ),
    )
    return Response(body, headers=SSE_HEADERS)


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


@route("/use-chat", "GET", streaming=False)
def use_chat_page() -> Response:
    """The useChat example page (``make chat-ui`` builds it)."""
    body, headers = use_chat_file()
    return Response(body, headers=headers)


@route("/use-chat/<name>", "GET", streaming=False)
def use_chat_asset(name: str) -> Response:
    """The useChat example's script and style."""
    body, headers = use_chat_file(name)
    return Response(body, headers=headers)


@route("/healthz", "GET", streaming=False)
def healthz() -> Response:
    """Liveness, and which upstream answers (the page shows it)."""
    body = health_body(_settings())
    return Response(body, headers={"Content-Type": JSON_CONTENT_TYPE})


@route("/completion", "GET")
def completion() -> Response:
    """Stream a legacy completion for ``?prompt=`` as Server-Sent Events."""
    prompt = query_prompt(request.environ, _settings())
    return _sse(_upstream().completion(prompt))


@route("/completionChat", "GET")
def completion_chat() -> Response:
    """Stream one chat completion for ``?prompt=`` as Server-Sent Events."""
    prompt = query_prompt(request.environ, _settings())
    return _sse(_upstream().chat([{"role": "user", "content": prompt}]))


@route("/completions/chat", "POST")
def completions_chat() -> Response:
    """Stream a chat completion for a JSON ``prompt`` or ``messages`` as SSE."""
    body = json_object(request.environ, _settings())
    messages = messages_from_json(body, "prompt", _settings().max_prompt_chars)
    return _sse(_upstream().chat(messages))


@route("/api/stream", "POST")
def api_stream() -> Response:
    """Stream a chat answer for a JSON ``message`` or ``messages`` as raw text."""
    body = json_object(request.environ, _settings())
    messages = messages_from_json(body, "message", _settings().max_prompt_chars)
    answer = _upstream().chat(messages)
    text = text_stream(
        answer.opener,
        tools=answer.tools,
        follow_up=answer.follow_up,
        client_socket=client_socket_of(request.environ),
    )
    return Response(text, headers=TEXT_HEADERS)


@route("/api/chat", "POST")
def api_chat() -> Response:
    """Answer the Vercel AI SDK's ``useChat`` in its UI message stream."""
    answer = _upstream().chat(ui_messages(request.environ, _settings()))
    body = ui_message_stream(
        answer.opener,
        tools=answer.tools,
        follow_up=answer.follow_up,
        keepalive_seconds=_settings().keepalive_seconds,
        client_socket=client_socket_of(request.environ),
    )
    return Response(body, headers=UI_MESSAGE_STREAM_HEADERS)
