"""A Django view that streams a chat completion for ?prompt= as Server-Sent Events.

Save it and this repo's shared/streaming.py (as streaming.py) beside manage.py, then
mount the view in your urls.py: `path("chat", django_view.chat)`.
"""

import functools

import openai
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from streaming import SSE_HEADERS, StreamError, open_upstream, sse_frames


@functools.cache
def client() -> openai.OpenAI:
    return openai.OpenAI()  # reads OPENAI_API_KEY and OPENAI_BASE_URL


def json_error(error: StreamError) -> HttpResponse:
    """The error as JSON {"error": {"message", "type"}}, with its status and headers."""
    return HttpResponse(
        error.body(),
        status=error.status,
        headers=error.headers,
        content_type="application/json",
    )


@require_GET  # so HEAD, which would cost a completion, gets 405
def chat(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    """Stream one chat completion for ?prompt= as Server-Sent Events."""
    prompt = request.GET.get("prompt", "")
    try:
        if not prompt.strip():
            raise StreamError(400, "Give a non-empty 'prompt'.")
        chunks = open_upstream(
            lambda: client().chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": prompt}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        body = sse_frames(chunks, client_socket=request.META.get("gunicorn.socket"))
    except StreamError as error:
        return json_error(error)
    return StreamingHttpResponse(body, headers=SSE_HEADERS)
