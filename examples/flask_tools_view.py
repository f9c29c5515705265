"""A Flask blueprint whose model may call a tool, run by the server mid-answer.

Save it as flask_tools_view.py, and this repo's shared/streaming.py as streaming.py,
beside your app's module; then `app.register_blueprint(flask_tools_view.bp)`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import openai
from flask import Blueprint, Response, request

from streaming import (
    SSE_HEADERS,
    Opener,
    Step,
    StreamError,
    StreamSettings,
    Tools,
    check_request,
    client_socket_of,
    sse_frames,
)

bp = Blueprint("chat_tools", __name__)
settings = StreamSettings.from_env_or_exit()


def order_status(order_id: str) -> str:
    """The delivery status of an order, given its id (such as "A-1042")."""
    return {"A-1042": "shipped"}.get(order_id, "no such order")


tools = Tools(
    [order_status],
    max_steps=settings.max_steps,
    timeout_seconds=settings.tool_timeout_seconds,
)


@functools.cache
def client() -> openai.OpenAI:
    return openai.OpenAI(
        timeout=settings.upstream_timeout_seconds,
        max_retries=settings.upstream_max_retries,
    )


def model_call(messages: list[Any]) -> Opener:
    """The request of one model call, with the tools offered."""
    return lambda: client().chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=messages,
        tools=tools.definitions(),
        stream=True,
        stream_options={"include_usage": True},
    )


@bp.get("/chat-tools")
def chat_tools() -> Response:
    """Stream an answer for ?prompt= as SSE, with tool calls and their results."""
    prompt = request.args.get("prompt", "")
    try:
        check_request(request.environ, settings)
        if not prompt.strip() or len(prompt) > settings.max_prompt_chars:
            limit = settings.max_prompt_chars
            raise StreamError(400, f"Give a 'prompt' of 1 to {limit} characters.")
        messages: list[Any] = [{"role": "user", "content": prompt}]

        def follow_up(steps: Sequence[Step]) -> Opener:
            """The next model call: the conversation, the calls and their results."""
            return model_call(messages + [m for s in steps for m in s.chat_messages()])

        body = sse_frames(
            model_call(messages),
            tools=tools,
            follow_up=follow_up,
            keepalive_seconds=settings.keepalive_seconds,
            client_socket=client_socket_of(request.environ),
        )
    except StreamError as error:
        headers = {**error.headers, "Content-Type": "application/json"}
        return Response(error.body(), error.status, headers)
    return Response(body, headers=SSE_HEADERS)
