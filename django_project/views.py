"""The contract's routes as Django views: read the request, build the response.

Validation, upstream calls, framing and cleanup live in ``shared``; a view here only
translates between Django and that core.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_variables

from django_project.apps import StreamConfig
from django_project.errors import json_error
from shared.config import Settings
from shared.environ import json_object, query_prompt, ui_request
from shared.guard import Guard, cors_headers, method_not_allowed
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
from shared.resumable import Streamed
from shared.streaming import (
    TEXT_HEADERS,
    StreamError,
    client_socket_of,
    text_stream,
)
from shared.upstream import Answer, Upstream
from shared.validation import messages_from_json

View = Callable[..., HttpResponseBase]  # URL parameters come as keyword arguments


def _settings() -> Settings:
    stream_settings: Settings = settings.STREAM_SETTINGS
    return stream_settings


def _upstream() -> Upstream:
    return StreamConfig.upstream


def _guard() -> Guard:
    return StreamConfig.guard


def guarded(
    method: str, *, streaming: bool = True, resumes: str | None = None
) -> Callable[[View], View]:
    """Answer ``method`` and its preflight; errors become the contract's JSON.

    Any other method, HEAD included, gets 405 (it would start a completion). A
    ``streaming`` route spends the key, so ``shared.guard``'s rules apply to it
    (same site, token or ``STREAM_AUTHORIZE``, rate and size limits). A route
    that ``resumes`` answers (of that encoding) gives a request with
    ``Last-Event-ID`` the rest of its answer instead of calling the view.

    Django's CSRF token check is waived: these routes take only JSON bodies and
    refuse cross-site requests (``shared.guard``), which is their CSRF defence, so
    that API clients need no token.
    """

    def decorator(view: View) -> View:
        @csrf_exempt
        @sensitive_variables()  # no local below a view shows on an error page
        @functools.wraps(view)
        def guarded_view(request: HttpRequest, **url_args: str) -> HttpResponseBase:
            if request.method not in (method, "OPTIONS"):
                return json_error(method_not_allowed(request.method or "", [method]))
            guard = _guard()
            origins = guard.cors_origins(streaming)
            response: HttpResponseBase
            try:
                preflight = guard.admit(
                    request,
                    request.method,
                    request.headers,
                    request.META.get("REMOTE_ADDR"),
                    method,
                    streaming=streaming,
                )
                if preflight is not None:
                    response = HttpResponse(status=204, headers=preflight)
                    del response["Content-Type"]
                else:
                    if streaming:
                        _close_database_connections()
                    resumed = resumes and resumed_answer(
                        request.META, StreamConfig.answers, resumes
                    )
                    response = (
                        _response(resumed) if resumed else view(request, **url_args)
                    )
            except StreamError as error:
                response = json_error(error)
            for name, value in cors_headers(request.headers, origins).items():
                response[name] = value
            return response

        return guarded_view

    return decorator


def _close_database_connections() -> None:
    """Close the connections that the access check opened, before a stream starts.

    ``STREAM_AUTHORIZE`` (e.g. ``signed_in``) reads the session and the user from
    the database. Django closes connections on ``request_finished``, which fires
    when the response is closed: for a stream, at its end. Under gevent each
    request has its own connection, so a thousand open streams would hold a
    thousand. One inside ``atomic()`` (``ATOMIC_REQUESTS``) is left to it.
    """
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def _response(streamed: Streamed) -> HttpResponseBase:
    if streamed.status == 204:
        return HttpResponse(status=204, headers=streamed.headers)
    return StreamingHttpResponse(
        streamed.body, status=streamed.status, headers=streamed.headers
    )


def _stream(
    request: HttpRequest,
    answer: Answer,
    *,
    resumable: bool = True,
    encoding: str = "sse",
    chat_id: str | None = None,
) -> HttpResponseBase:
    """``answer`` as the route writes it; logged for resuming when it may be."""
    streamed = stream_answer(
        answer,
        request.META,
        _settings(),
        StreamConfig.answers if resumable else None,
        encoding=encoding,
        chat_id=chat_id,
    )
    return _response(streamed)


@guarded("GET", streaming=False)
def index(request: HttpRequest) -> HttpResponse:
    """The demo page."""
    body, headers = index_page()
    return HttpResponse(body, headers=headers)


@guarded("GET", streaming=False)
def page_asset(request: HttpRequest, name: str) -> HttpResponse:
    """The demo page's script and style."""
    body, headers = asset(name)
    return HttpResponse(body, headers=headers)


@guarded("GET", streaming=False)
def use_chat_page(request: HttpRequest) -> HttpResponse:
    """The useChat example page (``make chat-ui`` builds it)."""
    body, headers = use_chat_file()
    return HttpResponse(body, headers=headers)


@guarded("GET", streaming=False)
def use_chat_asset(request: HttpRequest, name: str) -> HttpResponse:
    """The useChat example's script and style."""
    body, headers = use_chat_file(name)
    return HttpResponse(body, headers=headers)


@guarded("GET", streaming=False)
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness, and which upstream answers (the page shows it)."""
    body = health_body(_settings())
    return HttpResponse(body, headers={"Content-Type": JSON_CONTENT_TYPE})


@guarded("GET")
def completion(request: HttpRequest) -> HttpResponseBase:
    """Stream a legacy completion for ``?prompt=`` as Server-Sent Events."""
    prompt = query_prompt(request.META, _settings())
    return _stream(request, _upstream().completion(prompt), resumable=False)


@guarded("GET", resumes="sse")
def completion_chat(request: HttpRequest) -> HttpResponseBase:
    """Stream one chat completion for ``?prompt=`` as Server-Sent Events."""
    prompt = query_prompt(request.META, _settings())
    messages = [{"role": "user", "content": prompt}]
    return _stream(request, _upstream().chat(messages))


@guarded("POST", resumes="sse")
def completions_chat(request: HttpRequest) -> HttpResponseBase:
    """Stream a chat completion for a JSON ``prompt`` or ``messages`` as SSE."""
    body = json_object(request.META, _settings())
    messages = messages_from_json(body, "prompt", _settings().max_prompt_chars)
    return _stream(request, _upstream().chat(messages))


@guarded("POST")
def api_stream(request: HttpRequest) -> StreamingHttpResponse:
    """Stream a chat answer for a JSON ``message`` or ``messages`` as raw text."""
    body = json_object(request.META, _settings())
    messages = messages_from_json(body, "message", _settings().max_prompt_chars)
    answer = _upstream().chat(messages)
    text = text_stream(
        answer.opener,
        tools=answer.tools,
        follow_up=answer.follow_up,
        client_socket=client_socket_of(request.META),
    )
    return StreamingHttpResponse(text, headers=TEXT_HEADERS)


@guarded("POST", resumes="ui")
def api_chat(request: HttpRequest) -> HttpResponseBase:
    """Answer the Vercel AI SDK's ``useChat`` in its UI message stream."""
    chat_id, messages = ui_request(request.META, _settings())
    answer = _upstream().chat(messages)
    return _stream(request, answer, encoding="ui", chat_id=chat_id)


@guarded("GET")
def api_chat_stream(request: HttpRequest, chat_id: str) -> HttpResponseBase:
    """``useChat``'s ``resume: true``: the chat's answer in progress, or 204."""
    return _response(chat_in_progress(chat_id, request.META, StreamConfig.answers))


@guarded("DELETE")
def stop_stream(request: HttpRequest, answer_id: str) -> HttpResponseBase:
    """Stop a resumable answer, whichever worker or machine produces it."""
    return _response(stop_answer(answer_id, StreamConfig.answers))
