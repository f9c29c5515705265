"""What a streaming view answers, the same in both apps: a status, headers and body.

A view hands over the model's answer; here it becomes a stream written by the
route's encoder, relayed to the client, or, with ``STREAM_RESUMABLE=1``, produced
into a log that the response reads (``shared.resumable``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.config import Settings
from shared.resumable import HEADERS, Answers, Streamed, last_event_id
from shared.streaming import StreamError, client_socket_of, sse_frames
from shared.ui_message_stream import ui_message_stream
from shared.upstream import Answer

ENCODE = {"sse": sse_frames, "ui": ui_message_stream}


def stream_answer(
    answer: Answer,
    environ: Mapping[str, Any],
    settings: Settings,
    answers: Answers | None,
    *,
    encoding: str = "sse",
    chat_id: str | None = None,
) -> Streamed:
    """Stream ``answer`` as the route writes it (``sse``, or ``ui`` for useChat)."""
    client_socket = client_socket_of(environ)
    body = ENCODE[encoding](
        answer.opener,
        tools=answer.tools,
        follow_up=answer.follow_up,
        keepalive_seconds=settings.keepalive_seconds,
        # A resumable answer runs on without its client: its reader watches it.
        client_socket=None if answers else client_socket,
    )
    if answers is None:
        return Streamed(200, dict(HEADERS[encoding]), body)
    return answers.start(
        body, encoding=encoding, chat_id=chat_id, client_socket=client_socket
    )


def resumed_answer(
    environ: Mapping[str, Any], answers: Answers | None, encoding: str
) -> Streamed | None:
    """The rest of the answer a request resumes (``Last-Event-ID``), if it does."""
    event_id = last_event_id(environ) if answers else None
    if answers is None or event_id is None:
        return None
    return answers.resume(event_id, encoding, client_socket_of(environ))


def chat_in_progress(
    chat_id: str, environ: Mapping[str, Any], answers: Answers | None
) -> Streamed:
    """``useChat``'s ``resume: true``: the answer in progress for its chat, from its
    start, or ``204`` (always, when answers are not resumable)."""
    if answers is None:
        return Streamed(204, {}, [])
    return answers.chat_stream(chat_id, client_socket_of(environ))


def stop_answer(answer_id: str, answers: Answers | None) -> Streamed:
    """``DELETE /streams/ANSWER``: stop it, from whichever process (204), or 404."""
    if answers is None:
        raise StreamError(404, "Answers are not resumable here.", "not_found")
    answers.stop(answer_id)
    return Streamed(204, {}, [])
