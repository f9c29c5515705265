"""A Flask blueprint for the Vercel AI SDK's useChat: POST /api/chat.

Save it as flask_use_chat_view.py beside your app's module, with this repo's
shared/streaming.py as streaming.py and shared/ui_message_stream.py as
ui_message_stream.py; then `app.register_blueprint(flask_use_chat_view.bp)`.
"""

import functools
from typing import Any

import openai
from flask import Blueprint, Response, request

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

bp = Blueprint("use_chat", __name__)
settings = StreamSettings.from_env_or_exit()


@functools.cache
def client() -> openai.OpenAI:
    return openai.OpenAI(
        timeout=settings.upstream_timeout_seconds,
        max_retries=settings.upstream_max_retries,
    )


@bp.post("/api/chat")
def chat() -> Response:
    """Answer useChat's messages in the AI SDK's UI message stream."""
    try:
        check_request(request.environ, settings, methods=("POST",))
        body = json_body(request.get_data(), request.content_type)  # 415 if not JSON
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
            client_socket=client_socket_of(request.environ),
        )
    except StreamError as error:  # useChat shows this body as its error
        headers = {**error.headers, "Content-Type": "application/json"}
        return Response(error.body(), error.status, headers)
    return Response(stream, headers=UI_MESSAGE_STREAM_HEADERS)
