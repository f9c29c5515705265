"""What a view reads from its request, read from the WSGI environ by both apps.

Flask's ``request.environ`` and Django's ``request.META`` are the same dictionary,
so reading it here rather than through each framework's parsed request gives the
same request the same answer in both apps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.config import Settings
from shared.streaming import json_body
from shared.ui_message_stream import messages_from_ui
from shared.validation import prompt_from_query, request_body


def query_prompt(environ: Mapping[str, Any], settings: Settings) -> str:
    """The ``?prompt=`` of a GET route (400 when missing, repeated or too long)."""
    query = environ.get("QUERY_STRING", "")
    return prompt_from_query(query, settings.max_prompt_chars)


def json_object(environ: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The JSON object a POST route was sent (400, 413 or 415 otherwise)."""
    body = request_body(environ, settings.max_body_bytes)
    return json_body(body, environ.get("CONTENT_TYPE"))


def ui_request(
    environ: Mapping[str, Any], settings: Settings
) -> tuple[str | None, list[dict[str, Any]]]:
    """The chat id and messages of the body ``useChat`` posts (400, 413 or 415
    otherwise)."""
    body = json_object(environ, settings)
    chat_id = body.get("id")
    messages = messages_from_ui(body, settings.max_prompt_chars)
    return (chat_id if isinstance(chat_id, str) else None), messages
