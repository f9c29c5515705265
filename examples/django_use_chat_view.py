"""A Django view for the Vercel AI SDK's useChat: POST /api/chat.

Save it as django_use_chat_view.py beside manage.py, with this repo's
shared/streaming.py as streaming.py and shared/ui_message_stream.py as
ui_message_stream.py; then mount it: `path("api/chat", django_use_chat_view.chat)`.
"""

import functools
from typing import Any

import openai
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from streaming import (
    StreamError,
    StreamSettings,
    check_request,
    client_socket_of,
    json_body,
    open_upstream,
)
from ui_message_stream import (
    UI_MESSAGE_STREAM_HEADERS,
    messages_from_ui,
    ui_message_stream,
)

settings = StreamSettings.from_env_or_exit()


@functools.cache
def client() -> openai.OpenAI:
    return openai.OpenAI(
        timeout=settings.upstream_timeout_seconds,
        max_retries=settings.upstream_max_retries,
    )


# No CSRF token: check_request refuses other sites, json_body any body but JSON
# (which a form can't send), and useChat sends no token.
@csrf_exempt
def chat(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Answer useChat's messages in the AI SDK's UI message stream."""
    try:
        check_request(request.META, settings, methods=("POST",))
        body = json_body(request.body, request.content_type)  # 415 if not JSON
        messages: list[Any] = messages_from_ui(body, settings.max_prompt_chars)
        chunks = open_upstream(
            lambda: client().chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        stream = ui_message_stream(
            chunks,
            keepalive_seconds=settings.keepalive_seconds,
            client_socket=client_socket_of(request.META),
        )
    except StreamError as error:  # useChat shows this body as its error
        return HttpResponse(
            error.body(),
            status=error.status,
            headers=error.headers,
            content_type="application/json",
        )
    return StreamingHttpResponse(stream, headers=UI_MESSAGE_STREAM_HEADERS)
