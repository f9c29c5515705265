"""A Django view whose model may call a tool, run by the server mid-answer.

Save it as django_tools_view.py, and this repo's shared/streaming.py as streaming.py,
beside manage.py; then mount it: `path("chat-tools", django_tools_view.chat_tools)`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import openai
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

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


def chat_tools(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Stream an answer for ?prompt= as SSE, with tool calls and their results."""
    prompt = request.GET.get("prompt", "")
    try:
        check_request(request.META, settings)
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
            client_socket=client_socket_of(request.META),
        )
    except StreamError as error:
        return HttpResponse(
            error.body(),
            status=error.status,
            headers=error.headers,
            content_type="application/json",
        )
    return StreamingHttpResponse(body, headers=SSE_HEADERS)
