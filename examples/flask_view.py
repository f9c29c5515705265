"""A Flask blueprint that streams a chat completion for ?prompt= as Server-Sent Events.

Save it as flask_view.py, and this repo's shared/streaming.py as streaming.py, beside
your app's module; then `app.register_blueprint(flask_view.bp)`.
"""

import functools

import openai
from flask import Blueprint, Response, request

from streaming import (
    SSE_HEADERS,
    StreamError,
    StreamSettings,
    check_request,
    client_socket_of,
    open_upstream,
    sse_frames,
)

bp = Blueprint("chat", __name__)
# STREAM_KEEPALIVE_SECONDS, STREAM_CORS_ORIGINS, ...: a bad value stops the server.
settings = StreamSettings.from_env_or_exit()


@functools.cache
def client() -> openai.OpenAI:
    # Created on first use, inside the worker: see "Deploying" for why.
    return openai.OpenAI(  # reads OPENAI_API_KEY and OPENAI_BASE_URL
        timeout=settings.upstream_timeout_seconds,
        max_retries=settings.upstream_max_retries,
    )


def json_error(error: StreamError) -> Response:
    """The error as JSON {"error": {"message", "type"}}, with its status and headers."""
    headers = {**error.headers, "Content-Type": "application/json"}
    return Response(error.body(), error.status, headers)


@bp.get("/chat")
def chat() -> Response:
    """Stream one chat completion for ?prompt= as Server-Sent Events."""
    prompt = request.args.get("prompt", "")
    try:
        check_request(request.environ, settings)  # HEAD, other sites: before paying
        if not prompt.strip() or len(prompt) > settings.max_prompt_chars:
            limit = settings.max_prompt_chars
            raise StreamError(400, f"Give a 'prompt' of 1 to {limit} characters.")
        chunks = open_upstream(
            lambda: client().chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": prompt}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        body = sse_frames(
            chunks,
            keepalive_seconds=settings.keepalive_seconds,
            client_socket=client_socket_of(request.environ),
        )
    except StreamError as error:
        return json_error(error)
    return Response(body, headers=SSE_HEADERS)
