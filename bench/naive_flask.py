"""The blog-post Flask streaming view that everyone copies: the baseline to beat.

Deliberately naive, as found in tutorials: one module-level client, an SDK object
per chunk, the delta pasted after ``data:`` (a newline in model output would break
the framing), no keep-alive comments, nothing to stop the model when the browser
leaves. The only guard is the one blog code has: skip chunks without text.

Served by ``make bench`` under gunicorn's default sync worker and its gevent worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Flask, Response, request
from openai import OpenAI

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")

app = Flask(__name__)
client = OpenAI()  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment


@app.route("/completionChat")
def completion_chat() -> Response:
    prompt = request.args.get("prompt", "")

    def generate() -> Iterator[str]:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield "data: %s\n\n" % chunk.choices[0].delta.content  # noqa: UP031
        yield "data: [DONE]\n\n"

    return Response(generate(), mimetype="text/event-stream")
