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
from shared.environ import json_object, query_prompt, ui_request
from shared.guard import Guard, cors_headers
from shared.pages import (
    JSON_CONTENT_TYPE,
    asset,
    health_body,
    index_page,
    use_chat_file,
)
from shared.responses import (
    chat_in_progress,
    resumed_answer,
    stop_answer,
    stream_answer,
)
from shared.resumable import Answers, Streamed
from shared.streaming import (
    TEXT_HEADERS,
    StreamError,
    client_socket_of,
    text_stream,
)
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


def _answers() -> Answers | None:
    """The resumable answers (``STREAM_RESUMABLE=1``), else ``None``."""
    answers: Answers | None = current_app.extensions["answers"]
    return answers


def route(
    path: str, method: str, *, streaming: bool = True, resumes: str | None = None
) -> Callable[[View], View]:
    """Mount a view at ``path`` for ``method``, and ``OPTIONS`` for the preflight.

    Werkzeug answers any other method with 405, which ``flask_app.errors`` writes
    as JSON; HEAD, which Werkzeug adds to every GET rule, is refused below. A route
    that ``resumes`` answers (of that encoding) gives a request with
    ``Last-Event-ID`` the rest of its answer instead of calling the view.
    """

    def decorator(view: View) -> View:
        guarded_view = guarded(method, streaming=streaming, resumes=resumes)(view)
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


def guarded(
    method: str, *, streaming: bool = True, resumes: str | None = None
) -> Callable[[View], View]:
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
                if preflight is not None:
                    response = Response(status=204, headers=preflight)
                    del response.headers["Content-Type"]
                elif resumed := _resumed(resumes):
                    response = _response(resumed)
                else:
                    response = view(**url_args)
            except StreamError as error:
                response = json_error(error)
            response.headers.update(cors_headers(request.headers, origins))
            return response

        return guarded_view

    return decorator


def _resumed(encoding: str | None) -> Streamed | None:
    """The rest of an answer, for a request with ``Last-Event-ID`` to a route that
    resumes answers written as ``encoding``."""
    if encoding is None:
        return None
    return resumed_answer(request.environ, _answers(), encoding)


def _response(streamed: Streamed) -> Response:
    response = Response(streamed.body, streamed.status, streamed.headers)
    if streamed.status == 204:
        del response.headers["Content-Type"]
    return response


def _stream(
    answer: Answer,
    *,
    resumable: bool = True,
    encoding: str = "sse",
    chat_id: str | None = None,
) -> Response:
    """``answer`` as the route writes it; logged for resuming when it may be."""
    answers = _answers() if resumable else None
    streamed = stream_answer(
        answer,
        request.environ,
        _settings(),
        answers,
        encoding=encoding,
        chat_id=chat_id,
    )
    return _response(streamed)


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
    return _stream(_upstream().completion(prompt), resumable=False)


@route("/completionChat", "GET", resumes="sse")
def completion_chat() -> Response:
    """Stream one chat completion for ``?prompt=`` as Server-Sent Events."""
    prompt = query_prompt(request.environ, _settings())
    return _stream(_upstream().chat([{"role": "user", "content": prompt}]))


@route("/completions/chat", "POST", resumes="sse")
def completions_chat() -> Response:
    """Stream a chat completion for a JSON ``prompt`` or ``messages`` as SSE."""
    body = json_object(request.environ, _settings())
    messages = messages_from_json(body, "prompt", _settings().max_prompt_chars)
    return _stream(_upstream().chat(messages))


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


@route("/api/chat", "POST", resumes="ui")
def api_chat() -> Response:
    """Answer the Vercel AI SDK's ``useChat`` in its UI message stream."""
    chat_id, messages = ui_request(request.environ, _settings())
    return _stream(_upstream().chat(messages), encoding="ui", chat_id=chat_id)


@route("/api/chat/<chat_id>/stream", "GET")
def api_chat_stream(chat_id: str) -> Response:
    """``useChat``'s ``resume: true``: the chat's answer in progress, or 204."""
    return _response(chat_in_progress(chat_id, request.environ, _answers()))


@route("/streams/<answer_id>", "DELETE")
def stop_stream(answer_id: str) -> Response:
    """Stop a resumable answer, whichever worker or machine produces it."""
    return _response(stop_answer(answer_id, _answers()))
