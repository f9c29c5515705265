"""FastAPI with sse-starlette and ``AsyncOpenAI``: what many pick instead of Flask.

Written as its documentation and tutorials suggest: an async generator of deltas
wrapped in ``EventSourceResponse`` (which adds framing and pings), served by one
uvicorn process.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from openai import AsyncOpenAI
from sse_starlette import EventSourceResponse

MODEL = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")

app = FastAPI()
client = AsyncOpenAI()  # OPENAI_API_KEY and OPENAI_BASE_URL from the environment


@app.get("/completionChat")
async def completion_chat(prompt: str) -> EventSourceResponse:
    async def deltas() -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
        yield "[DONE]"

    return EventSourceResponse(deltas())
