"""The Vercel AI SDK's UI message stream: what ``useChat`` reads, and what it sends.

``useChat`` (React, Vue, Svelte; AI SDK 5 and later) posts the conversation as
UIMessages and reads the answer as SSE whose events are JSON "parts": ``start``,
steps, text, reasoning and tool parts with ids, ``finish``, ``[DONE]``.
:func:`messages_from_ui` turns its request into chat messages;
:func:`ui_message_stream` streams an answer in its protocol, on the relay of
``streaming`` (keep-alives, cancellation, tools). A copied ``useChat`` view needs
this module and ``streaming.py`` beside it.

Clients before mid-2026 validate each part against a strict schema, so a field
that AI SDK 5.0 did not know breaks them (vercel/ai#11269: ``finishReason`` on
``finish``): the parts here carry only the fields every client from 5.0 on
accepts, and the finish reason travels in ``messageMetadata``.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from typing import Any, Unpack

# Copied beside streaming.py, this module imports it as `streaming`; in a package of
# yours, write `from . import streaming`. mypy takes the name as a constant
# (pyproject.toml's `always_true`, `make check`'s `--always-false`).
IN_THIS_REPO = __package__ == "shared"
if IN_THIS_REPO:
    from shared import streaming
else:
    import streaming

UI_MESSAGE_STREAM_HEADERS = {
    **streaming.SSE_HEADERS,
    "x-vercel-ai-ui-message-stream": "v1",
}

_KEEPALIVE = b": keep-alive\n\n"
STOPPED = "stopped"  # the error type of an answer stopped on request
_DONE = b"data: [DONE]\n\n"
_SURROGATE = re.compile("[\ud800-\udfff]")

# --- The request: UIMessages into chat messages ---------------------------------------

ROLES = frozenset({"system", "user", "assistant"})
TRIGGERS = frozenset({"submit-message", "regenerate-message"})
# Parts that say nothing the model needs to read again: its own thinking, step
# markers, sources it cited, and the app's data parts.
_IGNORED_PARTS = frozenset({"reasoning", "step-start"})
_IGNORED_PREFIXES = ("source-", "data-")
# A tool part whose call ran to an end; one still streaming, or waiting for
# approval, has no result to show the model and is left out.
_ENDED_TOOL_STATES = frozenset({"output-available", "output-error"})
_FUNCTION_NAME = re.compile("[a-zA-Z0-9_-]{1,64}")
_MAX_ID_CHARS = 256


def messages_from_ui(body: Mapping[str, Any], max_chars: int) -> list[dict[str, Any]]:
    """The chat messages of the body ``useChat`` sends, or a 400 naming the fault.

    ``{"messages": [UIMessage], "trigger", "messageId"}``: text parts become the
    content, ended tool parts the assistant's ``tool_calls`` and the ``tool``
    messages. ``regenerate-message`` drops ``messageId`` and what follows it, so
    the model answers the conversation before that message again.
    """
    ui_messages = body.get("messages")
    if not isinstance(ui_messages, list) or not ui_messages:
        raise _refused("'messages' must be a non-empty list of UIMessages.")
    trigger = body.get("trigger", "submit-message")
    if trigger not in TRIGGERS:
        raise _refused(
            f"'trigger' must be one of {sorted(TRIGGERS)}, got {_short(trigger)}."
        )
    if trigger == "regenerate-message":
        ui_messages = _before(ui_messages, body.get("messageId"))
    conversation = _Conversation()
    for index, message in enumerate(ui_messages):
        conversation.add(index, message)
    return conversation.checked(max_chars)


def _before(ui_messages: list[Any], message_id: object) -> list[Any]:
    """The messages before the one ``message_id`` names (all of them if none does)."""
    if message_id is None:
        return ui_messages
    if not isinstance(message_id, str):
        raise _refused(f"'messageId' must be a string, got {_short(message_id)}.")
    for index, message in enumerate(ui_messages):
        if isinstance(message, dict) and message.get("id") == message_id:
            if index == 0:
                raise _refused(
                    f"'messageId' {_short(message_id)} is the first message: there "
                    "is nothing before it to answer.",
                )
            return ui_messages[:index]
    return ui_messages


class _Conversation:
    """Chat messages built from UIMessages, one at a time, in order."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._texts: list[str] = []  # what counts toward the length limit
        self._call_ids: set[str] = set()

    def add(self, index: int, message: object) -> None:
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _refused(f"{where} must be an object.")
        role, parts = message.get("role"), message.get("parts")
        if not isinstance(role, str) or role not in ROLES:
            raise _refused(
                f"{where}.role must be one of {sorted(ROLES)}, got {_short(role)}."
            )
        if not isinstance(parts, list):
            hint = (
                " (a 'content' string is the AI SDK 4 message: use AI SDK 5 or later)"
                if "content" in message
                else ""
            )
            raise _refused(f"{where}.parts must be a list of parts{hint}.")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for number, part in enumerate(parts):
            part_where = f"{where}.parts[{number}]"
            kind = _part_type(part_where, part)
            if kind == "text":
                if calls:  # text after tool calls: the model's next step
                    self._say(role, texts, calls, results)
                    texts, calls, results = [], [], []
                texts.append(_text(part_where, part, "text"))
            elif kind == "dynamic-tool" or kind.startswith("tool-"):
                if role != "assistant":
                    raise _refused(
                        f"{part_where} is a tool part in a {role!r} message."
                    )
                self._tool_part(part_where, kind, part, calls, results)
            elif kind not in _IGNORED_PARTS and not kind.startswith(_IGNORED_PREFIXES):
                raise _refused(
                    f"{part_where} has type {_short(kind)}, which this route can't "
                    "send to the model: send text, tool, reasoning, step, source "
                    "or data parts.",
                )
        self._say(role, texts, calls, results)

    def checked(self, max_chars: int) -> list[dict[str, Any]]:
        total = sum(map(len, self._texts))
        if total > max_chars:
            raise _refused(
                f"The messages hold {total} characters; the limit is {max_chars}."
            )
        if not any(text.strip() for text in self._texts):
            raise _refused("Every message is empty: give some text.")
        return self.messages

    def _say(
        self,
        role: str,
        texts: list[str],
        calls: list[dict[str, Any]],
        results: list[dict[str, Any]],
    ) -> None:
        content = "\n\n".join(texts)
        self._texts.append(content)
        if calls:
            self.messages.append(
                {"role": "assistant", "content": content or None, "tool_calls": calls}
            )
            self.messages.extend(results)
        elif texts:
            self.messages.append({"role": role, "content": content})

    def _tool_part(
        self,
        where: str,
        kind: str,
        part: Mapping[str, Any],
        calls: list[dict[str, Any]],
        results: list[dict[str, Any]],
    ) -> None:
        if part.get("state") not in _ENDED_TOOL_STATES:
            return
        name = part.get("toolName") if kind == "dynamic-tool" else kind[len("tool-") :]
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise _refused(
                f"{where} names the tool {_short(name)}; a tool's name is 1 to 64 "
                "letters, digits, '_' or '-'.",
            )
        call_id = part.get("toolCallId")
        if not isinstance(call_id, str) or not 0 < len(call_id) <= _MAX_ID_CHARS:
            raise _refused(
                f"{where}.toolCallId must be a non-empty string of at most "
                f"{_MAX_ID_CHARS} characters, got {_short(call_id)}.",
            )
        if call_id in self._call_ids:
            raise _refused(
                f"{where}.toolCallId {_short(call_id)} is the id of an earlier call."
            )
        self._call_ids.add(call_id)
        arguments = _json_text(part.get("input", {}))
        if part["state"] == "output-error":
            output = "Error: " + _text(where, part, "errorText")
        else:
            output = _json_text(part.get("output"))
        self._texts.extend((arguments, output))
        calls.append(
            {
                "id": _well_formed(call_id),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
        results.append(
            {"role": "tool", "tool_call_id": _well_formed(call_id), "content": output}
        )


def _refused(message: str) -> streaming.StreamError:
    return streaming.StreamError(400, message)


def _part_type(where: str, part: object) -> str:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _refused(f"{where} must be an object with a 'type' string.")
    kind: str = part["type"]
    return kind


def _text(where: str, part: Mapping[str, Any], key: str) -> str:
    value = part.get(key)
    if not isinstance(value, str):
        raise _refused(f"{where}.{key} must be a string, got {_short(value)}.")
    return _well_formed(value)


def _json_text(value: object) -> str:
    """A tool's input or output as the text the model reads: a string as it is."""
    if isinstance(value, str):
        return _well_formed(value)
    return _well_formed(json.dumps(value, ensure_ascii=False))


def _well_formed(text: str) -> str:
    """Lone surrogates (JSON can carry half an emoji) as U+FFFD, for UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


# --- The response: events into UI message parts ---------------------------------------


class UiMessageEncoder:
    """Writes the typed events of ``streaming`` as UI message stream parts.

    One instance per answer. ``start`` and ``start-step`` go out with the first
    output, so that a failure before it still gets its status. A model call's
    parts (its thinking, text and tool calls, then the results of the tools the
    server ran) make one step; the next call's first output, or the end, closes
    it with ``finish-step``. Text and reasoning parts are closed when another
    part begins, so that the client shows them in the order they came.
    """

    keepalive: bytes | None = _KEEPALIVE

    def __init__(self, message_id: str | None = None) -> None:
        self.message_id = message_id or "msg-" + secrets.token_urlsafe(16)
        self._started = False
        self._step_ended = False  # the step's model call finished; its tools may run
        self._open_part: tuple[str, str] | None = None  # ("text" | "reasoning", id)
        self._part_count = 0
        self._calls: dict[int, _CallStart] = {}  # the step's calls by fragment index
        self._started_calls: set[str] = set()
        self._finish_reason: str | None = None
        self._usage: streaming.Usage | None = None

    def encode(self, events: Iterable[streaming.Event]) -> bytes:
        parts: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, streaming.Error):  # the last event: the stream ends
                if event.type == STOPPED:  # stopped on request (a resumable answer)
                    parts.append({"type": "abort"})
                else:
                    parts.append({"type": "error", "errorText": event.message})
                return _frames(parts) + _DONE
            self._parts_of(event, parts)
        return _frames(parts)

    def end(self) -> bytes:
        parts: list[dict[str, Any]] = []
        self._start(parts)
        self._close_part(parts)
        parts.append({"type": "finish-step"})
        metadata: dict[str, Any] = {}
        if self._finish_reason is not None:
            metadata["finishReason"] = self._finish_reason
        if self._usage is not None:
            metadata["usage"] = self._usage.as_dict()
        finish: dict[str, Any] = {"type": "finish"}
        if metadata:
            finish["messageMetadata"] = metadata
        parts.append(finish)
        return _frames(parts) + _DONE

    def _parts_of(self, event: streaming.Event, parts: list[dict[str, Any]]) -> None:
        match event:
            case streaming.Text(text) | streaming.Refusal(text) if text:
                self._model_output(parts)
                self._delta("text", text, parts)
            case streaming.Reasoning(text) if text:
                self._model_output(parts)
                self._delta("reasoning", text, parts)
            case streaming.ToolCallDelta():
                self._model_output(parts)
                self._call_fragment(event, parts)
            case streaming.ToolCall(call_id, name, arguments):
                self._model_output(parts)
                self._close_part(parts)
                self._start_call(call_id, name, parts)
                parts.append(
                    {
                        "type": "tool-input-available",
                        "toolCallId": call_id,
                        "toolName": name,
                        "input": _input(arguments),
                    }
                )
            case streaming.ToolResult(call_id, output, error):
                self._start(parts)  # the tools of the step that called them
                if error is not None:
                    parts.append(
                        {
                            "type": "tool-output-error",
                            "toolCallId": call_id,
                            "errorText": error,
                        }
                    )
                else:
                    parts.append(
                        {
                            "type": "tool-output-available",
                            "toolCallId": call_id,
                            "output": output or "",
                        }
                    )
            case streaming.Finish(reason):
                self._finish_reason = reason
                self._close_part(parts)
                self._step_ended = True
                self._calls.clear()
            case streaming.Usage():
                self._usage = event if self._usage is None else self._usage + event

    def _start(self, parts: list[dict[str, Any]]) -> None:
        """Open the message and its first step, with the first part written."""
        if not self._started:
            self._started = True
            parts.append({"type": "start", "messageId": self.message_id})
            parts.append({"type": "start-step"})

    def _model_output(self, parts: list[dict[str, Any]]) -> None:
        """What the model says opens a new step once the last model call ended."""
        self._start(parts)
        if self._step_ended:
            self._step_ended = False
            self._close_part(parts)
            parts.append({"type": "finish-step"})
            parts.append({"type": "start-step"})

    def _delta(self, kind: str, text: str, parts: list[dict[str, Any]]) -> None:
        if self._open_part is None or self._open_part[0] != kind:
            self._close_part(parts)
            self._open_part = (kind, f"{kind}-{self._part_count}")
            self._part_count += 1
            parts.append({"type": f"{kind}-start", "id": self._open_part[1]})
        parts.append({"type": f"{kind}-delta", "id": self._open_part[1], "delta": text})

    def _close_part(self, parts: list[dict[str, Any]]) -> None:
        if self._open_part is not None:
            kind, part_id = self._open_part
            parts.append({"type": f"{kind}-end", "id": part_id})
            self._open_part = None

    def _call_fragment(
        self, delta: streaming.ToolCallDelta, parts: list[dict[str, Any]]
    ) -> None:
        """Chat Completions sends a call's id and name first, then its arguments in
        pieces; parallel calls interleave by ``index``.

        The call starts with its first piece of arguments: a client names the tool
        part by the name ``tool-input-start`` gives, and some servers send the name
        itself in pieces.
        """
        self._close_part(parts)
        call = self._calls.setdefault(delta.index, _CallStart())
        call.id = call.id or delta.id
        if call.id not in self._started_calls:
            call.name += delta.name or ""
        call.pending += delta.arguments
        if call.id is None or not call.name or not call.pending:
            return
        self._start_call(call.id, call.name, parts)
        parts.append(
            {
                "type": "tool-input-delta",
                "toolCallId": call.id,
                "inputTextDelta": call.pending,
            }
        )
        call.pending = ""

    def _start_call(self, call_id: str, name: str, parts: list[dict[str, Any]]) -> None:
        if call_id not in self._started_calls:
            self._started_calls.add(call_id)
            parts.append(
                {"type": "tool-input-start", "toolCallId": call_id, "toolName": name}
            )


class _CallStart:
    """A tool call's fragments: its id and name, and the arguments not yet sent."""

    def __init__(self) -> None:
        self.id: str | None = None
        self.name = ""
        self.pending = ""


def _frames(parts: Iterable[Mapping[str, Any]]) -> bytes:
    """Each part as one ``data:`` line: compact JSON never holds a line break."""
    text = "".join(
        f"data: {json.dumps(part, ensure_ascii=False, separators=(',', ':'))}\n\n"
        for part in parts
    )
    return _well_formed(text).encode()


def _input(arguments: str) -> Any:
    """A call's arguments as the client shows them: parsed, or as sent if not JSON."""
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return arguments


def ui_message_stream(
    chunks: Iterable[Any] | streaming.Opener,
    *,
    keepalive_seconds: float = streaming.DEFAULT_KEEPALIVE_SECONDS,
    client_socket: socket.socket | None = None,
    tools: streaming.Tools | None = None,
    follow_up: streaming.FollowUp | None = None,
    message_id: str | None = None,
    **callbacks: Unpack[streaming.Callbacks],
) -> streaming.Body:
    """Stream ``chunks`` as the UI message stream ``useChat`` reads.

    As :func:`~streaming.sse_frames` (same arguments, same failures before the
    first byte, same cancellation), in ``useChat``'s parts; send it with
    :data:`UI_MESSAGE_STREAM_HEADERS`. ``message_id`` names the assistant message
    (a random one by default).
    """
    return streaming.encoded_stream(
        chunks,
        UiMessageEncoder(message_id),
        keepalive_seconds=keepalive_seconds,
        client_socket=client_socket,
        tools=tools,
        follow_up=follow_up,
        **callbacks,
    )
