"""The built-in demo upstream: an offline, deterministic OpenAI-compatible model.

It lets the apps run, be tried and be tested with no API key and no network. It is
an ``httpx2`` transport, not a fake client, so the real ``openai.OpenAI`` client
builds the request, parses the SSE wire format into its typed objects and closes
the stream exactly as over the network::

    client = openai.OpenAI(api_key="demo", base_url=DEMO_BASE_URL,
                           http_client=httpx2.Client(transport=DemoTransport()))

- ``.invalid`` never resolves: even if the transport were bypassed, nothing leaves.
- Chat, legacy completions and the Responses API: streamed with OpenAI's events and
  fields, or one JSON object with the same text. The text depends only on the last
  user message, byte for byte; ids and timestamps are fresh as on the real service.
- Tokens are roughly words, a space going with the following word (``"Hello"``,
  ``" world"``) and a newline alone, so that line breaks visibly stream.
  ``completion_tokens`` counts deltas; ``prompt_tokens`` the words of all messages.
- The body yields one SSE event at a time with ``time.sleep`` between them
  (cooperative once gevent has patched ``time``; gevent is not imported here).
  ``close()`` only sets a flag checked around each sleep: it may come from another
  greenlet while the generator is suspended, where closing the generator raises.
"""

from __future__ import annotations

import json
import re
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import httpx2

__all__ = ["DEMO_BASE_URL", "DemoStream", "DemoTransport", "demo_answer"]

DEMO_BASE_URL = "http://demo.invalid/v1"

Json = dict[str, Any]
_FIELD = {"chat/completions": "messages", "completions": "prompt", "responses": "input"}
_TOKEN = re.compile(r"\n|[^\S\n]*\S+|[^\S\n]+")  # joins back to the exact text
_CLOSINGS = ("Happy streaming!", "Thanks for trying the demo!", "Have a nice day!")


def demo_answer(prompt: str) -> str:
    """The demo model's answer to ``prompt``: six lines, a quote and a short list."""
    words = prompt.split()
    quote = " ".join(words) or "(nothing)"
    quote = quote if len(quote) <= 48 else quote[:47].rstrip() + "…"
    closing = _CLOSINGS[zlib.crc32(prompt.encode()) % len(_CLOSINGS)]
    return (
        "Hello! I am the offline demo model: this answer never left your machine.\n"
        f'You wrote: "{quote}" ({len(words)} word{"" if len(words) == 1 else "s"}).\n'
        "While I type, notice that:\n"
        "- tokens arrive one by one, roughly word by word;\n"
        "- line breaks and this little list stream in as they are produced;\n"
        f"- pressing stop cancels the answer at once. {closing}"
    )


class DemoStream(httpx2.SyncByteStream):
    """A response body yielding one SSE event per iteration, ``delay`` s apart."""

    def __init__(self, events: Iterator[Json | None], delay: float = 0.0) -> None:
        self._events, self._delay = events, delay
        self.closed, self.sent = False, 0  # sent: events yielded so far

    def __iter__(self) -> Iterator[bytes]:
        for event in self._events:
            if self.sent and self._delay > 0 and not self.closed:
                time.sleep(self._delay)
            if self.closed:
                return
            self.sent += 1
            yield _sse(event)

    def close(self) -> None:
        self.closed = True


def _sse(event: Json | None) -> bytes:
    """``None`` is ``[DONE]``; Responses API events (with a ``type``) are named."""
    if event is None:
        return b"data: [DONE]\n\n"
    name = f"event: {event['type']}\n" if "type" in event else ""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"{name}data: {data}\n\n".encode()


def _text(content: Any) -> str:
    """The text of a message ``content``: a string or a list of content parts."""
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _error(status: int, message: str, param: str | None = None) -> httpx2.Response:
    code = param and "missing_required_parameter"
    error = {"message": message, "type": "invalid_request_error", "param": param}
    return httpx2.Response(status, json={"error": {**error, "code": code}})


def _messages(field: str, value: Any) -> list[Json] | None:
    """The request's messages, or ``None`` if ``value`` is missing or malformed."""
    if isinstance(value, str) and field != "messages":
        value = [{"role": "user", "content": value}]
    elif isinstance(value, list) and field == "prompt":
        value = [{"role": "user", "content": v} for v in value if isinstance(v, str)]
    if not isinstance(value, list):
        return None
    return [m for m in value if isinstance(m, dict)] or None


class DemoTransport(httpx2.BaseTransport):
    """Serve POST ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``."""

    def __init__(self, token_delay: float = 0.02) -> None:
        self.token_delay = token_delay

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        route = path.removeprefix("/v1/") if request.method == "POST" else ""
        if route not in _FIELD:
            return _error(404, f"Invalid URL ({request.method} {path})")
        try:
            body = json.loads(request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        field = _FIELD[route]
        messages = _messages(field, body.get(field))
        if messages is None:
            return _error(400, f"Missing required parameter: '{field}'.", field)
        reply = _Reply(body, messages)
        headers = {"x-request-id": f"req_demo{uuid.uuid4().hex[:24]}"}
        if body.get("stream") is not True:
            return httpx2.Response(200, headers=headers, json=reply.whole(field))
        chat = field == "messages"
        events = reply.events() if field == "input" else reply.chunks(chat)
        stream = DemoStream(events, self.token_delay)
        headers |= {"content-type": "text/event-stream; charset=utf-8"}
        return httpx2.Response(200, headers=headers, stream=stream)


class _Reply:
    """One request's answer, in each of the three wire formats."""

    def __init__(self, body: Json, messages: list[Json]) -> None:
        users = [m for m in messages if m.get("role", "user") == "user"] or messages
        last = _text(users[-1].get("content"))
        self.tokens: list[str] = _TOKEN.findall(demo_answer(last))
        self.prompt = sum(len(_text(m.get("content")).split()) for m in messages)
        self.model = str(body.get("model") or "demo")
        self.created, self.hex = int(time.time()), uuid.uuid4().hex[:24]
        opts = body.get("stream_options")
        self.with_usage = isinstance(opts, dict) and opts.get("include_usage") is True

    def head(self, chat: bool, suffix: str = "") -> Json:
        usage = {"prompt_tokens": self.prompt, "completion_tokens": len(self.tokens)}
        usage["total_tokens"] = self.prompt + len(self.tokens)
        kind = "chat.completion" + suffix if chat else "text_completion"
        prefix = "chatcmpl" if chat else "cmpl"
        return {
            "id": f"{prefix}-demo{self.hex}",
            "object": kind,
            "model": self.model,
            "created": self.created,
            "system_fingerprint": None,
            "usage": usage,
        }

    def chunks(self, chat: bool) -> Iterator[Json | None]:
        """Chat completion chunks (``chat``) or legacy completion chunks."""
        head = self.head(chat, ".chunk")
        usage = head.pop("usage")
        head |= {"usage": None} if chat and self.with_usage else {}
        deltas: list[Json] = (
            [{"role": "assistant", "content": "", "refusal": None}] if chat else []
        )
        deltas += [{"content": token} for token in self.tokens] + [{}]
        for left, delta in enumerate(deltas, 1 - len(deltas)):
            part = {"delta": delta} if chat else {"text": delta.get("content", "")}
            end = None if left else "stop"
            choice = {"index": 0, **part, "logprobs": None, "finish_reason": end}
            yield head | {"choices": [choice]}
        if self.with_usage:
            yield head | {"choices": [], "usage": usage}
        yield None

    def whole(self, field: str) -> Json:
        """The answer as one JSON object, when the request did not ask to stream."""
        if field == "input":
            return self.response(done=True)
        text, chat = "".join(self.tokens), field == "messages"
        message: Json = {"role": "assistant", "content": text, "refusal": None}
        part = {"message": message | {"annotations": []}} if chat else {"text": text}
        choice = {"index": 0, **part, "logprobs": None, "finish_reason": "stop"}
        return self.head(chat) | {"choices": [choice]}

    def response(self, done: bool) -> Json:
        """The Responses API ``response`` object, in progress or completed."""
        text, out = "".join(self.tokens), len(self.tokens)
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item = {
            "id": f"msg_demo{self.hex}",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        usage = {
            "input_tokens": self.prompt,
            "output_tokens": out,
            "total_tokens": self.prompt + out,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        return {
            "id": f"resp_demo{self.hex}",
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "status": "completed" if done else "in_progress",
            "error": None,
            "incomplete_details": None,
            "output": [item] if done else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "text": {"format": {"type": "text"}},
            "usage": usage if done else None,
        }

    def events(self) -> Iterator[Json | None]:
        """The Responses API stream: named events, a ``sequence_number``, no [DONE]."""
        start, final = self.response(done=False), self.response(done=True)
        item: Json = final["output"][0]
        part: Json = item["content"][0]
        at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
        events: list[Json] = [
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": item | {"status": "in_progress", "content": []},
            },
            {"type": "response.content_part.added", **at, "part": part | {"text": ""}},
            *(
                {
                    "type": "response.output_text.delta",
                    **at,
                    "delta": token,
                    "logprobs": [],
                }
                for token in self.tokens
            ),
            {
                "type": "response.output_text.done",
                **at,
                "text": part["text"],
                "logprobs": [],
            },
            {"type": "response.content_part.done", **at, "part": part},
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": final},
        ]
        for number, event in enumerate(events):
            yield event | {"sequence_number": number}
