"""A Flask app that streams a chat completion for ?prompt= as Server-Sent Events.

Save this repo's shared/streaming.py as streaming.py beside this file, then run
`flask --app flask_view run` (or gunicorn, see "Deploying").
"""

import functools

import openai
from flask import Flask, Response, request

from streaming import SSE_HEADERS, StreamError, open_upstream, sse_frames

app = Flask(__name__)


@functools.cache
def client() -> openai.OpenAI:
    # Created on first use, inside the worker: see "Deploying" for why.
    return openai.OpenAI()  # reads OPENAI_API_KEY and OPENAI_BASE_URL


def json_error(error: StreamError) -> Response:
    """The error as JSON {"error": {"message", "type"}}, with its status and headers."""
    headers = {**error.headers, "Content-Type": "application/json"}
    return Response(error.body(), error.status, headers)


@app.get("/chat")
def chat() -> Response:
    """Stream one chat completion for ?prompt= as Server-Sent Events."""
    prompt = request.args.get("prompt", "")
    try:
        if request.method == "HEAD":  # Flask routes it here: it would cost a completion
            raise StreamError(405, "Use GET here.", headers={"Allow": "GET"})
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
        body = sse_frames(chunks, client_socket=request.environ.get("gunicorn.socket"))
    except StreamError as error:
        return json_error(error)
    return Response(body, headers=SSE_HEADERS)
