"""Test-side HTTP helpers: requests to a server under test, an independent SSE parser.

SSE bodies are parsed with httpx-sse's decoder, not with the project's own code, so a
framing bug can't hide behind a matching parsing bug.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote

from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from httpx_sse._models import ServerSentEvent

from tests.servers import Server

Response = tuple[int, http.client.HTTPMessage, bytes]


def parse_sse(body: bytes) -> list[ServerSentEvent]:
    """Every event a conforming parser (httpx-sse) finds in ``body``."""
    lines = SSELineDecoder()
    decoder = SSEDecoder()
    events = []
    for line in [*lines.decode(body.decode("utf-8")), *lines.flush()]:
        event = decoder.decode(line)
        if event is not None:
            events.append(event)
    return events


def texts(events: list[ServerSentEvent]) -> list[str]:
    """The data of the plain (text) events, before ``[DONE]``."""
    return [e.data for e in events if e.event == "message" and e.data != "[DONE]"]


def get_chat(
    server: Server, prompt: str, path: str = "/completionChat", **kw: Any
) -> Response:
    return server.request("GET", f"{path}?prompt={quote(prompt)}", **kw)


def post_json(
    server: Server,
    path: str,
    payload: object,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> Response:
    body = json.dumps(payload).encode()
    return server.request(
        "POST",
        path,
        body,
        {"Content-Type": "application/json", **(headers or {})},
        **kw,
    )


def error_of(response: Response) -> dict[str, str]:
    """The contract's ``{"error": {...}}`` of a JSON error response."""
    status, headers, body = response
    assert headers["Content-Type"] == "application/json", (status, body)
    error: dict[str, str] = json.loads(body)["error"]
    assert set(error) == {"message", "type"}
    return error
