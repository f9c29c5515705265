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
from shared.environ import json_object, query_prompt, ui_messages
from shared.guard import Guard, cors_headers, method_not_allowed
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

View = Callable[..., HttpResponseBase]  # URL parameters come as keyword arguments


def _settings() -> Settings:
    stream_settings: Settings = settings.STREAM_SETTINGS
    return stream_settings


def _upstream() -> Upstream:
    return StreamConfig.upstream


def _guard() -> Guard:
    return StreamConfig.guard


def guarded(method: str, *, streaming: bool = True) -> Callable[[View], View]:
    """Answer ``method`` and its preflight; errors become the contract's JSON.

    Any other method, HEAD included, gets 405 (it would start a completion). A
    ``streaming`` route spends the key, so ``shared.guard``'s rules apply to it
    (same site, token or ``STREAM_AUTHORIZE``, rate and size limits).

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
                if preflight is None:
                    if streaming:
                        _close_database_connections()
                    response = view(request, **url_args)
                else:
                    response = HttpResponse(status=204, headers=preflight)
                    del response["Content-Type"]
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


def _sse(request: HttpRequest, answer: Answer) -> StreamingHttpResponse:
    body = sse_frames(
        answer.opener,
        tools=answer.tools,
        follow_up=answer.follow_up,
        keepalive_seconds=_settings().keepalive_seconds,
        client_socket=client_socket_of(request.META),
    )
    return StreamingHttpResponse(body, headers=SSE_HEADERS)


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
def completion(request: HttpRequest) -> StreamingHttpResponse:
    """Stream a legacy completion for ``?prompt=`` as Server-Sent Events."""
    prompt = query_prompt(request.META, _settings())
    return _sse(request, _upstream().completion(prompt))


@guarded("GET")
def completion_chat(request: HttpRequest) -> StreamingHttpResponse:
    """Stream one chat completion for ``?prompt=`` as Server-Sent Events."""
    prompt = query_prompt(request.META, _settings())
    return _sse(request, _upstream().chat([{"role": "user", "content": prompt}]))


@guarded("POST")
def completions_chat(request: HttpRequest) -> StreamingHttpResponse:
    """Stream a chat completion for a JSON ``prompt`` or ``messages`` as SSE."""
    body = json_object(request.META, _settings())
    messages = messages_from_json(body, "prompt", _settings().max_prompt_chars)
    return _sse(request, _upstream().chat(messages))


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


@guarded("POST")
def api_chat(request: HttpRequest) -> StreamingHttpResponse:
    """Answer the Vercel AI SDK's ``useChat`` in its UI message stream."""
    answer = _upstream().chat(ui_messages(request.META, _settings()))
    body = ui_message_stream(
        answer.opener,
        tools=answer.tools,
        follow_up=answer.follow_up,
        keepalive_seconds=_settings().keepalive_seconds,
        client_socket=client_socket_of(request.META),
    )
    return StreamingHttpResponse(body, headers=UI_MESSAGE_STREAM_HEADERS)
