"""The built-in demo upstream: an offline, deterministic OpenAI-compatible model.

It lets the apps run, be tried and be tested with no API key and no network. It is
an ``httpx2`` transport, not a fake client, so the real ``openai.OpenAI`` client
builds the request, parses the SSE wire format into its typed objects and closes
the stream exactly as over the network::

    client = openai.OpenAI(api_key="demo", base_url=DEMO_BASE_URL,
                           http_client=httpx2.Client(transport=DemoTransport()))

- ``.invalid`` never resolves: even if the transport were bypassed, nothing leaves.
- Chat, legacy completions and the Responses API: streamed with OpenAI's events and
  fields, or one JSON object with the same content. What the model says depends only
  on the request, byte for byte (``demo_turn``); ids and timestamps are fresh as on
  the real service, except tool call ids, which derive from the conversation.
- A reasoning model: on chat and Responses it thinks first (DeepSeek's
  ``reasoning_content``; a Responses reasoning summary), then answers or calls
  tools. Legacy completions only answer.
- Tool calling: offered ``tools`` are called when the last user message names them
  (keywords, see ``demo_turn``); tool results are quoted back in the next answer.
- ``max_completion_tokens``/``max_tokens``/``max_output_tokens`` cut the answer's
  text (``length``); the word "forbidden" in the prompt cuts it after a few tokens
  (``content_filter``).
- Tokens are roughly words, a space going with the following word (``"Hello"``,
  ``" world"``) and a newline alone, so that line breaks visibly stream.
  ``completion_tokens`` counts deltas (reasoning, text, argument pieces);
  ``prompt_tokens`` the words of all messages.
- The body yields one SSE event at a time with ``time.sleep`` between them
  (cooperative once gevent has patched ``time``; gevent is not imported here).
  ``close()`` only sets a flag checked around each sleep: it may come from another
  greenlet while the generator is suspended, where closing the generator raises.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2

__all__ = [
    "DEMO_BASE_URL",
    "DemoCall",
    "DemoStream",
    "DemoTransport",
    "DemoTurn",
    "demo_answer",
    "demo_turn",
]

DEMO_BASE_URL = "http://demo.invalid/v1"

Json = dict[str, Any]
_FIELD = {"chat/completions": "messages", "completions": "prompt", "responses": "input"}
_LIMITS = {  # the first one the request gives counts
    "chat/completions": ("max_completion_tokens", "max_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
}
_TOKEN = re.compile(r"\n|[^\S\n]*\S+|[^\S\n]+")  # joins back to the exact text
_PIECE = re.compile(r"\w+|\W+")  # tool arguments stream in pieces like these
_CLOSINGS = ("Happy streaming!", "Thanks for trying the demo!", "Have a nice day!")
_FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
_FILTERED_AFTER = 4  # answer tokens sent before the content filter cuts in
_WORD = re.compile(r"[a-z]+")
_NUMBER = re.compile(r"\d+")
# A tool is called when the prompt has a word of its name (fillers aside) or a
# synonym of one: "What time is it?" calls current_time, "Roll 2 dice" roll_dice.
_FILLERS = frozenset({"get", "set", "current", "list", "fetch", "find", "make", "do"})
_SYNONYMS = {"time": ("clock", "hour", "date"), "dice": ("die", "roll")}
_ZONE_NAME = re.compile(r"\b(?:UTC|[A-Z][A-Za-z_]+(?:/[A-Z][A-Za-z_+-]+)+)(?![\w/])")
_CITIES = {
    "tokyo": "Asia/Tokyo",
    "london": "Europe/London",
    "paris": "Europe/Paris",
    "berlin": "Europe/Berlin",
    "new york": "America/New_York",
    "los angeles": "America/Los_Angeles",
    "sydney": "Australia/Sydney",
    "mumbai": "Asia/Kolkata",
    "singapore": "Asia/Singapore",
}
_CITY = re.compile("|".join(rf"\b{c}\b" for c in _CITIES).replace(" ", r"\s+"), re.I)


def _quote(text: str, limit: int = 48) -> str:
    """``text`` on one line, whitespace collapsed, cut with an ellipsis."""
    quote = " ".join(text.split())
    return quote if len(quote) <= limit else quote[: limit - 1].rstrip() + "…"


def _said(prompt: str) -> str:
    """``"the prompt, quoted" (N words)``."""
    count = len(prompt.split())
    return (
        f'"{_quote(prompt) or "(nothing)"}" ({count} word{"" if count == 1 else "s"})'
    )


def demo_answer(prompt: str) -> str:
    """The demo model's answer to ``prompt``: six lines, a quote and a short list."""
    closing = _CLOSINGS[zlib.crc32(prompt.encode()) % len(_CLOSINGS)]
    return (
        "Hello! I am the offline demo model: this answer never left your machine.\n"
        f"You wrote: {_said(prompt)}.\n"
        "While I type, notice that:\n"
        "- tokens arrive one by one, roughly word by word;\n"
        "- line breaks and this little list stream in as they are produced;\n"
        f"- pressing stop cancels the answer at once. {closing}"
    )


@dataclass(frozen=True)
class DemoCall:
    """One tool call: ``arguments`` is compact JSON text, as a model writes it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class DemoTurn:
    """What the demo model says to one request, before any wire format."""

    reasoning: str
    text: str  # already cut by a token limit or the content filter
    calls: tuple[DemoCall, ...]
    finish: str  # "stop", "length", "content_filter" or "tool_calls"


def demo_turn(
    messages: Sequence[Json],
    tools: Sequence[Json] = (),
    tool_choice: Any = "auto",
    parallel_tool_calls: bool = True,
    max_tokens: int | None = None,
) -> DemoTurn:
    """The demo model's turn after chat-format ``messages``, offered ``tools``
    (chat's or the Responses API's shape).

    - After ``tool`` messages it quotes their outputs (``The tool NAME says: ...``).
    - After a user message it calls every offered tool that the message names (the
      words of a tool's name, and synonyms: time/clock/hour/date, dice/die/roll),
      or the only one offered, unless ``tool_choice`` says otherwise; only the
      first with ``parallel_tool_calls`` false. Else it answers ``demo_answer``.
    - The thinking is two lines: what it read, what it will do.
    - ``max_tokens`` cuts the text (not the thinking, nor a call): ``length``; the
      word "forbidden" cuts it after a few tokens and calls no tool:
      ``content_filter``.
    """
    results = _trailing_results(messages)
    if results:
        return _cut(*_quoting(messages, results), max_tokens)
    prompt = _last_user_text(messages)
    heard = f"The user wrote {_said(prompt)}.\n"
    offered = [f for f in map(_function, tools) if f is not None]
    filtered = bool(_FORBIDDEN.search(prompt))
    asks = _asks(messages) and not filtered
    chosen = _chosen(offered, prompt, tool_choice) if asks else []
    if chosen:
        calls = _make_calls(messages, chosen[: None if parallel_tool_calls else 1])
        plan = " and ".join(f"{c.name} with {c.arguments}" for c in calls)
        return DemoTurn(f"{heard}I will call {plan}.", "", calls, "tool_calls")
    plan = "None of my tools fits, so I" if offered else "I"
    reasoning = f"{heard}{plan} will answer in a few short lines that quote it."
    turn = _cut(reasoning, demo_answer(prompt), max_tokens)
    return _filtered(turn) if filtered else turn


def _cut(reasoning: str, text: str, max_tokens: int | None) -> DemoTurn:
    """The answer ``text``, or its first ``max_tokens`` tokens (``length``)."""
    tokens = _TOKEN.findall(text)
    if max_tokens is not None and len(tokens) > max_tokens:
        return DemoTurn(reasoning, "".join(tokens[:max_tokens]), (), "length")
    return DemoTurn(reasoning, text, (), "stop")


def _filtered(turn: DemoTurn) -> DemoTurn:
    tokens = _TOKEN.findall(turn.text)[:_FILTERED_AFTER]
    return DemoTurn(turn.reasoning, "".join(tokens), (), "content_filter")


def _last_user_text(messages: Sequence[Json]) -> str:
    users = [m for m in messages if m.get("role", "user") == "user"] or messages
    return _text(users[-1].get("content")) if users else ""


def _asks(messages: Sequence[Json]) -> bool:
    """Whether the conversation ends with the user's turn: then tools may be called."""
    return bool(messages) and messages[-1].get("role", "user") == "user"


def _trailing_results(messages: Sequence[Json]) -> list[Json]:
    """The ``tool`` messages that end the conversation, in order."""
    results: list[Json] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, message)
    return results


def _call_names(messages: Sequence[Json]) -> dict[str, str]:
    """Each earlier tool call's id, mapped to the tool's name."""
    names: dict[str, str] = {}
    for message in messages:
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                names[str(call.get("id"))] = str(function.get("name") or "")
    return names


def _quoting(messages: Sequence[Json], results: list[Json]) -> tuple[str, str]:
    """The thinking and the answer after tool ``results``: each output quoted."""
    names = _call_names(messages)
    said = [
        (names.get(str(m.get("tool_call_id"))) or "(unnamed)", _text(m.get("content")))
        for m in results
    ]
    tools = " and ".join(dict.fromkeys(name for name, _ in said))
    count = f"{len(said)} tool result{'' if len(said) == 1 else 's'}"
    reasoning = f"I have {count}, from {tools}.\nI will quote what the tools said."
    lines = [f"The tool {name} says: {_quote(output, 200)}" for name, output in said]
    return reasoning, "\n".join(["Here is what my tools said.", *lines])


def _function(tool: Any) -> Json | None:
    """An offered function tool as ``{"name", "description", "parameters"}``."""
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        return None
    function = tool.get("function", tool)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    return function


def _chosen(offered: list[Json], prompt: str, tool_choice: Any) -> list[Json]:
    """The offered tools to call for ``prompt``, in the order offered."""
    if tool_choice == "none" or not offered:
        return []
    if isinstance(tool_choice, dict):
        forced = _function(tool_choice) or {}
        return [f for f in offered if f["name"] == forced.get("name")][:1]
    words = set(_WORD.findall(prompt.lower()))
    words |= {word.removesuffix("s") for word in words}
    matched = [f for f in offered if _keywords(f["name"]) & words]
    if matched or len(offered) > 1 and tool_choice != "required":
        return matched
    return offered[:1]


def _keywords(name: str) -> set[str]:
    words = set(_WORD.findall(name.lower())) - _FILLERS
    return words.union(*(_SYNONYMS.get(w, ()) for w in words))


def _make_calls(
    messages: Sequence[Json], functions: list[Json]
) -> tuple[DemoCall, ...]:
    """The calls with their arguments and ids, which derive from the conversation."""
    prompt = _last_user_text(messages)
    seed = json.dumps(list(messages), sort_keys=True, default=str)
    calls = []
    for index, function in enumerate(functions):
        arguments = _arguments(function.get("parameters"), prompt)
        text = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
        digest = hashlib.sha256(f"{seed}\n{index}\n{function['name']}".encode())
        calls.append(
            DemoCall(f"call_demo{digest.hexdigest()[:24]}", function["name"], text)
        )
    return tuple(calls)


def _arguments(parameters: Any, prompt: str) -> Json:
    """Arguments for a JSON schema: from the prompt where it says, else defaults.

    Time zones (a property named ``*zone*`` or ``tz``): an IANA name in the prompt,
    else a known city's, else ``"UTC"``. Numbers: the prompt's integers, in order,
    fill the numeric properties. Enums: the first value the prompt names. Other
    required strings: the prompt itself."""
    properties = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(properties, dict):
        return {}
    required = parameters.get("required")
    required = required if isinstance(required, list) else []
    numbers = iter(int(n) for n in _NUMBER.findall(prompt))
    arguments: Json = {}
    for name, schema in properties.items():
        schema = schema if isinstance(schema, dict) else {}
        value = _value(name, schema, prompt, numbers, name in required)
        if value is not None:
            arguments[name] = value
    return arguments


def _value(
    name: str, schema: Json, prompt: str, numbers: Iterator[int], required: bool
) -> Any:
    """One property's value: what the prompt says, else its default, else (when
    it is required) a plain one; ``None`` leaves the property out."""
    kind, default, enum = schema.get("type"), schema.get("default"), schema.get("enum")
    if isinstance(enum, list) and enum:
        named = [v for v in enum if str(v).lower() in prompt.lower()]
        return next(iter(named), enum[0] if default is None else default)
    if kind == "string" and ("zone" in name.lower() or name.lower() == "tz"):
        return _zone(prompt) or default or "UTC"
    if default is None and required:
        plain = {"string": _quote(prompt, 200), "integer": 1, "number": 1}
        default = (plain | {"boolean": False, "array": []}).get(str(kind), {})
    return next(numbers, default) if kind in ("integer", "number") else default


def _zone(prompt: str) -> str | None:
    """An IANA time zone the prompt names, or that of the first city it names."""
    if named := _ZONE_NAME.search(prompt):
        return named.group()
    city = _CITY.search(prompt)
    return _CITIES[" ".join(city.group().lower().split())] if city else None


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


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> httpx2.Response:
    error = {"message": message, "type": "invalid_request_error", "param": param}
    return httpx2.Response(status, json={"error": {**error, "code": code}})


def _messages(field: str, value: Any) -> list[Json] | None:
    """The request's messages in chat form, or ``None`` if missing or malformed."""
    if isinstance(value, str) and field != "messages":
        value = [{"role": "user", "content": value}]
    elif isinstance(value, list) and field == "prompt":
        value = [{"role": "user", "content": v} for v in value if isinstance(v, str)]
    if not isinstance(value, list):
        return None
    items = [m for m in value if isinstance(m, dict)]
    return ([_as_chat(m) for m in items] if field == "input" else items) or None


def _as_chat(item: Json) -> Json:
    """A Responses API input item as a chat message: function calls and their
    outputs become an assistant's ``tool_calls`` and ``tool`` messages."""
    if item.get("type") == "function_call":
        function = {"name": item.get("name"), "arguments": item.get("arguments")}
        call = {"id": item.get("call_id"), "type": "function", "function": function}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if item.get("type") == "function_call_output":
        output = item.get("output")
        return {"role": "tool", "tool_call_id": item.get("call_id"), "content": output}
    if item.get("type", "message") != "message":
        return {"role": "assistant", "content": None}  # reasoning and the like
    return item


def _limit(route: str, body: Json) -> int | None | httpx2.Response:
    """The request's token limit, ``None`` for none, or the error for a bad one."""
    for name in _LIMITS[route]:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            message = f"Invalid '{name}': expected an integer >= 1, got {value!r}."
            return _error(400, message, name, "invalid_value")
        return value
    return None


def _tools_error(route: str, tools: Any) -> httpx2.Response | None:
    """OpenAI's 400 for ``tools`` that are not a list of well-formed functions."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        return _error(
            400, f"Invalid 'tools': expected an array, got {tools!r}.", "tools"
        )
    key = "function" if route == "chat/completions" else "name"
    for index, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") != "function":
            continue
        if _function(tool) is None or key not in tool:
            param = f"tools[{index}].{key}"
            message = f"Missing required parameter: '{param}'."
            return _error(400, message, param, "missing_required_parameter")
    return None


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
            message = f"Missing required parameter: '{field}'."
            return _error(400, message, field, "missing_required_parameter")
        limit = _limit(route, body)
        if isinstance(limit, httpx2.Response):
            return limit
        tools = body.get("tools") if field != "prompt" else None
        if error := _tools_error(route, tools):
            return error
        turn = demo_turn(
            messages,
            tools or (),
            body.get("tool_choice", "auto"),
            body.get("parallel_tool_calls") is not False,
            limit,
        )
        if field == "prompt":  # legacy completions: no thinking, no tools
            turn = DemoTurn("", turn.text, (), turn.finish)
        reply = _Reply(body, messages, turn)
        headers = {"x-request-id": f"req_demo{uuid.uuid4().hex[:24]}"}
        if body.get("stream") is not True:
            return httpx2.Response(200, headers=headers, json=reply.whole(field))
        chat = field == "messages"
        events = reply.events() if field == "input" else reply.chunks(chat)
        stream = DemoStream(events, self.token_delay)
        headers |= {"content-type": "text/event-stream; charset=utf-8"}
        return httpx2.Response(200, headers=headers, stream=stream)


def _pieces(call: DemoCall) -> list[str]:
    """The argument text in the fragments it streams in."""
    return _PIECE.findall(call.arguments)


class _Reply:
    """One request's answer, in each of the three wire formats."""

    def __init__(self, body: Json, messages: list[Json], turn: DemoTurn) -> None:
        self.turn = turn
        self.thinking: list[str] = _TOKEN.findall(turn.reasoning)
        self.tokens: list[str] = _TOKEN.findall(turn.text)
        self.prompt = sum(len(_text(m.get("content")).split()) for m in messages)
        self.model = str(body.get("model") or "demo")
        self.created, self.hex = int(time.time()), uuid.uuid4().hex[:24]
        opts = body.get("stream_options")
        self.with_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        self.tools = [f for f in map(_function, body.get("tools") or ()) if f]
        self.max_output_tokens = body.get("max_output_tokens")

    @property
    def completion_tokens(self) -> int:
        """Every delta the model produced: thinking, text, tool call fragments."""
        calls = sum(1 + len(_pieces(call)) for call in self.turn.calls)
        return len(self.thinking) + len(self.tokens) + calls

    def head(self, chat: bool, suffix: str = "") -> Json:
        out = self.completion_tokens
        usage: Json = {"prompt_tokens": self.prompt, "completion_tokens": out}
        usage["total_tokens"] = self.prompt + out
        if chat:
            usage["completion_tokens_details"] = {
                "reasoning_tokens": len(self.thinking)
            }
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

    def deltas(self, chat: bool) -> list[Json]:
        """Chat deltas: the role, DeepSeek's ``reasoning_content``, the text, then
        each tool call as OpenAI streams it (id and name, then argument pieces)."""
        if not chat:
            return [{"content": token} for token in self.tokens]
        deltas: list[Json] = [{"role": "assistant", "content": "", "refusal": None}]
        deltas += [{"content": None, "reasoning_content": t} for t in self.thinking]
        deltas += [{"content": token} for token in self.tokens]
        for index, call in enumerate(self.turn.calls):
            function = {"name": call.name, "arguments": ""}
            start = {"index": index, "id": call.id, "type": "function"}
            deltas.append({"tool_calls": [start | {"function": function}]})
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in _pieces(call)
            ]
        return deltas

    def chunks(self, chat: bool) -> Iterator[Json | None]:
        """Chat completion chunks (``chat``) or legacy completion chunks."""
        head = self.head(chat, ".chunk")
        usage = head.pop("usage")
        head |= {"usage": None} if chat and self.with_usage else {}
        deltas = [*self.deltas(chat), {}]
        for left, delta in enumerate(deltas, 1 - len(deltas)):
            part = {"delta": delta} if chat else {"text": delta.get("content", "")}
            end = None if left else self.turn.finish
            choice = {"index": 0, **part, "logprobs": None, "finish_reason": end}
            yield head | {"choices": [choice]}
        if self.with_usage:
            yield head | {"choices": [], "usage": usage}
        yield None

    def whole(self, field: str) -> Json:
        """The answer as one JSON object, when the request did not ask to stream."""
        if field == "input":
            return self.response(done=True)
        text, chat = self.turn.text, field == "messages"
        message: Json = {"role": "assistant", "content": text, "refusal": None}
        if self.turn.reasoning:
            message["reasoning_content"] = self.turn.reasoning
        if self.turn.calls:
            message["content"] = text or None
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.turn.calls
            ]
        part = {"message": message | {"annotations": []}} if chat else {"text": text}
        finish = self.turn.finish
        choice = {"index": 0, **part, "logprobs": None, "finish_reason": finish}
        return self.head(chat) | {"choices": [choice]}

    def output(self) -> list[Json]:
        """The Responses API output items: the reasoning, then calls or a message."""
        items: list[Json] = []
        if self.turn.reasoning:
            summary = [{"type": "summary_text", "text": self.turn.reasoning}]
            items.append(
                {"id": f"rs_demo{self.hex}", "type": "reasoning", "summary": summary}
            )
        for call in self.turn.calls:
            items.append(
                {
                    "id": "fc_" + call.id.removeprefix("call_"),
                    "type": "function_call",
                    "status": "completed",
                    "arguments": call.arguments,
                    "call_id": call.id,
                    "name": call.name,
                }
            )
        if not self.turn.calls:
            text = self.turn.text
            part = {
                "type": "output_text",
                "text": text,
                "annotations": [],
                "logprobs": [],
            }
            status = "completed" if self.turn.finish == "stop" else "incomplete"
            items.append(
                {
                    "id": f"msg_demo{self.hex}",
                    "type": "message",
                    "status": status,
                    "role": "assistant",
                    "content": [part],
                }
            )
        return items

    def response(self, done: bool) -> Json:
        """The Responses API ``response`` object, in progress or at its end."""
        out = self.completion_tokens
        usage = {
            "input_tokens": self.prompt,
            "output_tokens": out,
            "total_tokens": self.prompt + out,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": len(self.thinking)},
        }
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}
        cut = reason.get(self.turn.finish)
        status = "incomplete" if cut else "completed"
        return {
            "id": f"resp_demo{self.hex}",
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "status": status if done else "in_progress",
            "error": None,
            "incomplete_details": {"reason": cut} if cut and done else None,
            "max_output_tokens": self.max_output_tokens,
            "output": self.output() if done else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [
                {
                    "type": "function",
                    "name": f["name"],
                    "description": f.get("description"),
                    "parameters": f.get("parameters"),
                    "strict": f.get("strict"),
                }
                for f in self.tools
            ],
            "text": {"format": {"type": "text"}},
            "usage": usage if done else None,
        }

    def events(self) -> Iterator[Json | None]:
        """The Responses API stream: named events, a ``sequence_number``, no [DONE]."""
        start, final = self.response(done=False), self.response(done=True)
        events: list[Json] = [
            {"type": "response.created", "response": start},
            {"type": "response.in_progress", "response": start},
        ]
        for index, item in enumerate(final["output"]):
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": _in_progress(item),
                }
            )
            events += self.item_events(index, item)
            events.append(
                {
                    "type": "response.output_item.done",
                    "output_index": index,
                    "item": item,
                }
            )
        ending = (
            "response.completed"
            if final["status"] == "completed"
            else "response.incomplete"
        )
        events.append({"type": ending, "response": final})
        for number, event in enumerate(events):
            yield event | {"sequence_number": number}

    def item_events(self, index: int, item: Json) -> list[Json]:
        """The events between an output item's ``added`` and ``done``."""
        at: Json = {"item_id": item["id"], "output_index": index}
        if item["type"] == "reasoning":
            at["summary_index"] = 0
            part = item["summary"][0]
            return [
                {
                    "type": "response.reasoning_summary_part.added",
                    **at,
                    "part": part | {"text": ""},
                },
                *(
                    {
                        "type": "response.reasoning_summary_text.delta",
                        **at,
                        "delta": token,
                    }
                    for token in self.thinking
                ),
                {
                    "type": "response.reasoning_summary_text.done",
                    **at,
                    "text": part["text"],
                },
                {"type": "response.reasoning_summary_part.done", **at, "part": part},
            ]
        if item["type"] == "function_call":
            call = DemoCall(item["call_id"], item["name"], item["arguments"])
            return [
                *(
                    {
                        "type": "response.function_call_arguments.delta",
                        **at,
                        "delta": piece,
                    }
                    for piece in _pieces(call)
                ),
                {
                    "type": "response.function_call_arguments.done",
                    **at,
                    "arguments": call.arguments,
                },
            ]
        at["content_index"] = 0
        part = item["content"][0]
        return [
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
        ]


def _in_progress(item: Json) -> Json:
    """An output item as ``response.output_item.added`` announces it: empty."""
    if item["type"] == "reasoning":
        return item | {"summary": []}
    if item["type"] == "function_call":
        return item | {"status": "in_progress", "arguments": ""}
    return item | {"status": "in_progress", "content": []}
