"""Request validation: any input gives messages or the contract's 400/415, no crash."""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.streaming import StreamError, json_body
from shared.validation import (
    messages_from_json,
    prompt_from_query,
    query_fields,
    request_body,
)

LIMIT = 100


def call(
    call_id: object = "call_1", name: object = "now", arguments: object = "{}"
) -> dict[str, object]:
    """A tool call as Chat Completions writes it."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def answer(call_id: str = "call_1", output: str = "12:00") -> dict[str, object]:
    return {"role": "tool", "tool_call_id": call_id, "content": output}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=12,
)
TEXT_MESSAGES = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "wizard", 3]) | JSON_VALUES,
        "content": st.text(max_size=60) | JSON_VALUES,
    }
)
CALL_IDS = st.sampled_from(["call_1", "call_2", ""]) | JSON_VALUES
TOOL_CALLS = st.fixed_dictionaries(
    {
        "id": CALL_IDS,
        "type": st.just("function") | JSON_VALUES,
        "function": st.fixed_dictionaries(
            {
                "name": st.sampled_from(["now", "what time"]) | JSON_VALUES,
                "arguments": st.text(max_size=30) | JSON_VALUES,
            }
        ),
    }
)
CALLING_MESSAGES = st.fixed_dictionaries(
    {
        "role": st.just("assistant"),
        "tool_calls": st.lists(TOOL_CALLS | JSON_VALUES, max_size=3) | JSON_VALUES,
    },
    optional={"content": st.none() | st.text(max_size=30) | JSON_VALUES},
)
TOOL_MESSAGES = st.fixed_dictionaries(
    {
        "role": st.just("tool"),
        "tool_call_id": CALL_IDS,
        "content": st.text(max_size=30) | JSON_VALUES,
    }
)
MESSAGES = st.lists(TEXT_MESSAGES | CALLING_MESSAGES | TOOL_MESSAGES, max_size=4)
SHAPES = [{"role", "content"}, {"role", "content", "tool_calls"}]
# Well-typed histories whose calls and answers may not match.
SOME_IDS = st.sampled_from(["a", "b", "c"])
TOOL_HISTORIES = st.lists(
    st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=30)})
    | st.fixed_dictionaries(
        {
            "role": st.just("assistant"),
            "content": st.none() | st.text(max_size=20),
            "tool_calls": st.lists(
                st.builds(call, SOME_IDS, st.just("now"), st.text(max_size=20)),
                max_size=2,
            ),
        }
    )
    | st.builds(answer, SOME_IDS, st.text(max_size=20)),
    max_size=5,
)


@given(
    st.dictionaries(
        st.sampled_from(["prompt", "messages", "message", "x"]),
        JSON_VALUES | MESSAGES,
        max_size=3,
    )
)
def test_any_json_object_gives_messages_or_a_400(data: dict[str, object]) -> None:
    try:
        messages = messages_from_json(data, "prompt", LIMIT)
    except StreamError as error:
        assert error.status == 400 and error.message and len(error.message) < 300
    else:
        assert messages
        assert_a_history_the_upstream_can_follow(messages)


@given(TOOL_HISTORIES)
def test_a_tool_history_is_kept_as_sent_or_is_a_400(messages: list[Any]) -> None:
    try:
        kept = messages_from_json({"messages": messages}, "prompt", LIMIT)
    except StreamError as error:
        assert error.status == 400 and error.message and len(error.message) < 300
    else:
        assert kept == messages
        assert_a_history_the_upstream_can_follow(kept)


def assert_a_history_the_upstream_can_follow(messages: list[Any]) -> None:
    """Known shapes only, each answer to one earlier call, within the limit."""
    made, answered, total = set(), set(), 0
    for message in messages:
        total += len(message["content"] or "")
        if message["role"] == "tool":
            assert set(message) == {"role", "tool_call_id", "content"}
            assert message["tool_call_id"] in made - answered
            answered.add(message["tool_call_id"])
            continue
        assert set(message) in SHAPES
        for call in message.get("tool_calls", []):
            assert call["id"] not in made and call["type"] == "function"
            made.add(call["id"])
            total += len(call["function"]["arguments"])
    assert total <= LIMIT


@given(st.binary(max_size=200))
def test_any_body_bytes_give_an_object_or_a_400(body: bytes) -> None:
    try:
        assert isinstance(json_body(body, "application/json"), dict)
    except StreamError as error:
        assert error.status == 400


@pytest.mark.parametrize(
    "body", [b"[" * 100_000, b'{"a":' * 100_000, b"\xff\xfe", b'"just a string"']
)
def test_hostile_bodies_are_a_400(body: bytes) -> None:
    with pytest.raises(StreamError) as caught:
        json_body(body, "application/json; charset=utf-8")
    assert caught.value.status == 400


@pytest.mark.parametrize("content_type", [None, "", "text/json", "application/jsonx"])
def test_other_content_types_are_a_415(content_type: str | None) -> None:
    with pytest.raises(StreamError) as caught:
        json_body(json.dumps({"prompt": "hi"}).encode(), content_type)
    assert caught.value.status == 415


NO_SURROGATES = st.text(st.characters(exclude_categories=["Cs"]), max_size=120)


@given(st.dictionaries(st.text(max_size=8), NO_SURROGATES, max_size=3))
def test_any_query_gives_a_prompt_or_a_400(query: dict[str, str]) -> None:
    # A WSGI QUERY_STRING: the URL's bytes as Latin-1 characters.
    query_string = urlencode(query).encode().decode("latin-1")
    try:
        prompt = prompt_from_query(query_string, LIMIT)
    except StreamError as error:
        assert error.status == 400
    else:
        assert prompt == query["prompt"] and prompt.strip()


@pytest.mark.parametrize(
    ("query_string", "fields"),
    [
        ("a=1&b=x+y&c=%2B", [("a", "1"), ("b", "x y"), ("c", "+")]),
        (
            "p%72ompt=hi&&=v&bare&k=a=b",
            [("prompt", "hi"), ("", "v"), ("bare", ""), ("k", "a=b")],
        ),
        ("prompt=%FFhi&x=%ED%A0%80", [("prompt", "\ufffdhi"), ("x", "\ufffd" * 3)]),
        ("prompt=%C3%BC\xc3\xbc", [("prompt", "üü")]),  # encoded, then raw UTF-8
        ("prompt=%", [("prompt", "%")]),
    ],
    ids=["plus-and-escapes", "odd-pairs", "not-utf8", "raw-bytes", "lone-percent"],
)
def test_query_fields_are_decoded_as_a_browser_encodes_them(
    query_string: str, fields: list[tuple[str, str]]
) -> None:
    assert query_fields(query_string) == fields


@pytest.mark.parametrize("query_string", ["prompt=a&prompt=b", "prompt=a&prompt="])
def test_a_repeated_prompt_is_refused_not_guessed(query_string: str) -> None:
    with pytest.raises(StreamError) as caught:
        prompt_from_query(query_string, LIMIT)
    assert (caught.value.status, caught.value.message) == (
        400,
        "Give one 'prompt', got 2.",
    )


def environ(body: bytes, **variables: object) -> dict[str, object]:
    return {"wsgi.input": io.BytesIO(body), **variables}


def test_a_body_is_read_up_to_its_content_length_and_no_further() -> None:
    given = environ(b'{"a": 1}MORE', CONTENT_LENGTH="8")
    assert request_body(given, LIMIT) == b'{"a": 1}'


def test_a_terminated_input_is_read_to_its_end() -> None:
    # What gunicorn and Werkzeug's server say of a chunked body they decoded.
    given = environ(b"x" * 50, **{"wsgi.input_terminated": True})
    assert request_body(given, LIMIT) == b"x" * 50
    too_long = environ(b"x" * (LIMIT + 1), **{"wsgi.input_terminated": True})
    with pytest.raises(StreamError) as caught:
        request_body(too_long, LIMIT)
    assert caught.value.status == 413


def test_a_chunked_body_the_server_did_not_decode_is_411() -> None:
    given = environ(b"5\r\nhello\r\n0\r\n\r\n", HTTP_TRANSFER_ENCODING="chunked")
    with pytest.raises(StreamError) as caught:
        request_body(given, LIMIT)
    assert (caught.value.status, caught.value.type) == (411, "length_required")


@pytest.mark.parametrize(
    ("variables", "status"),
    [({"CONTENT_LENGTH": "20"}, 400), ({"CONTENT_LENGTH": str(LIMIT + 1)}, 413)],
    ids=["ends-early", "over-the-limit"],
)
def test_a_body_shorter_or_longer_than_allowed_is_refused(
    variables: dict[str, str], status: int
) -> None:
    with pytest.raises(StreamError) as caught:
        request_body(environ(b"short", **variables), LIMIT)
    assert caught.value.status == status


@pytest.mark.parametrize("length", [None, "", "abc", "\u00b2", "-1"])
def test_no_usable_content_length_is_an_empty_body(length: str | None) -> None:
    variables = {} if length is None else {"CONTENT_LENGTH": length}
    assert request_body(environ(b"ignored", **variables), LIMIT) == b""


@pytest.mark.parametrize("role", [["user"], {"user": 1}, None, 3])
def test_a_role_of_the_wrong_type_is_a_400(role: object) -> None:
    with pytest.raises(StreamError) as caught:
        messages_from_json({"messages": [{"role": role, "content": "hi"}]}, "prompt", 9)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "data",
    [
        {"prompt": "cut emoji \ud83d"},
        {"messages": [{"role": "user", "content": "\udfff and more"}]},
    ],
)
def test_a_lone_surrogate_becomes_the_replacement_character(
    data: dict[str, object],
) -> None:
    # JSON can carry one ("\ud83d"); sent on as is, the upstream request can't be
    # encoded as UTF-8 (it was a 502).
    [message] = messages_from_json(data, "prompt", LIMIT)
    assert "\ufffd" in message["content"]
    message["content"].encode()


ASK = {"role": "user", "content": "What time is it?"}
CALLING = {"role": "assistant", "content": None, "tool_calls": [call()]}


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param([ASK, CALLING, answer()], [ASK, CALLING, answer()], id="null"),
        pytest.param(
            [ASK, {"role": "assistant", "tool_calls": [call()]}, answer()],
            [ASK, CALLING, answer()],
            id="content-absent-is-null",
        ),
        pytest.param(
            [ASK, {**CALLING, "content": "Let me look."}, answer()],
            [ASK, {**CALLING, "content": "Let me look."}, answer()],
            id="text-beside-calls",
        ),
        pytest.param(
            [ASK, {**CALLING, "content": ""}, answer()],
            [ASK, {**CALLING, "content": ""}, answer()],
            id="empty-text-beside-calls",
        ),
        pytest.param(
            [
                ASK,
                {**CALLING, "tool_calls": [call("a"), call("b", "roll-dice_2")]},
                answer("b", "4"),
                answer("a"),
                {"role": "assistant", "content": "It is 12:00; you rolled 4."},
                {"role": "user", "content": "Again?"},
            ],
            [
                ASK,
                {**CALLING, "tool_calls": [call("a"), call("b", "roll-dice_2")]},
                answer("b", "4"),
                answer("a"),
                {"role": "assistant", "content": "It is 12:00; you rolled 4."},
                {"role": "user", "content": "Again?"},
            ],
            id="parallel-calls-answered-in-any-order",
        ),
        pytest.param(
            [ASK, CALLING, {**answer(), "content": ""}],
            [ASK, CALLING, {**answer(), "content": ""}],
            id="empty-tool-output",
        ),
        pytest.param(
            [ASK, {**CALLING, "tool_calls": [call(arguments='{"tz": "Eur')]}],
            [ASK, {**CALLING, "tool_calls": [call(arguments='{"tz": "Eur')]}],
            id="arguments-not-json-and-unanswered",
        ),
        pytest.param(
            # What the SDK's message objects dump to, and a streamed call's index.
            [
                ASK,
                {
                    **CALLING,
                    "refusal": None,
                    "tool_calls": [{**call(), "index": 0}],
                },
                {**answer(), "name": "now"},
                {"role": "user", "content": "Thanks", "tool_calls": None},
            ],
            [ASK, CALLING, answer(), {"role": "user", "content": "Thanks"}],
            id="other-keys-left-out",
        ),
        pytest.param(
            [ASK, {**CALLING, "tool_calls": [call("c\ud83d")]}, answer("c\ud83d")],
            [ASK, {**CALLING, "tool_calls": [call("c\ufffd")]}, answer("c\ufffd")],
            id="lone-surrogate-in-ids",
        ),
        pytest.param(
            [ASK, {**CALLING, "tool_calls": [call("x" * 256, "n" * 64)]}],
            [ASK, {**CALLING, "tool_calls": [call("x" * 256, "n" * 64)]}],
            id="longest-id-and-name",
        ),
    ],
)
def test_a_history_with_tool_calls_is_accepted(
    sent: list[object], kept: list[object]
) -> None:
    assert messages_from_json({"messages": sent}, "prompt", LIMIT) == kept


def refusal_of(messages: list[object], limit: int = LIMIT) -> str:
    with pytest.raises(StreamError) as caught:
        messages_from_json({"messages": messages}, "prompt", limit)
    assert caught.value.status == 400
    return caught.value.message


def calling(one_call: object) -> dict[str, object]:
    """An assistant message that makes ``one_call``."""
    return {**CALLING, "tool_calls": [one_call]}


ID_RULE = "must be a non-empty string of at most 256 characters"
NAME_RULE = "must match [a-zA-Z0-9_-]{1,64} (letters, digits, '_' and '-')"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        pytest.param(
            [ASK, answer()],
            "messages[1].tool_call_id must be the id of a call in an earlier "
            "assistant message's tool_calls, got 'call_1'.",
            id="answer-to-no-call",
        ),
        pytest.param(
            [ASK, answer(), CALLING],
            "messages[1].tool_call_id must be the id of a call in an earlier "
            "assistant message's tool_calls, got 'call_1'.",
            id="answer-before-its-call",
        ),
        pytest.param(
            [ASK, CALLING, answer("call_2")],
            "messages[2].tool_call_id must be the id of a call in an earlier "
            "assistant message's tool_calls, got 'call_2'.",
            id="answer-to-another-id",
        ),
        pytest.param(
            [ASK, CALLING, answer(), answer()],
            "messages[3].tool_call_id 'call_1' was already answered by "
            "messages[2]: answer each call once.",
            id="answered-twice",
        ),
        pytest.param(
            [ASK, {**CALLING, "tool_calls": [call(), call()]}],
            "messages[1].tool_calls[1].id 'call_1' is the id of an earlier call: "
            "give each call its own id.",
            id="same-id-twice-in-a-message",
        ),
        pytest.param(
            [ASK, CALLING, answer(), CALLING],
            "messages[3].tool_calls[0].id 'call_1' is the id of an earlier call: "
            "give each call its own id.",
            id="same-id-in-two-messages",
        ),
        pytest.param(
            [ASK, {**answer(), "tool_call_id": ""}],
            f"messages[1].tool_call_id {ID_RULE}, got ''.",
            id="empty-tool-call-id",
        ),
        pytest.param(
            [ASK, {"role": "tool", "content": "12:00"}],
            f"messages[1].tool_call_id {ID_RULE}, got None.",
            id="no-tool-call-id",
        ),
        pytest.param(
            [ASK, CALLING, {**answer(), "content": None}],
            "messages[2].content must be a string (the tool's output), got None.",
            id="tool-output-null",
        ),
        pytest.param(
            [ASK, CALLING, {**answer(), "content": {"time": "12:00"}}],
            "messages[2].content must be a string (the tool's output), "
            "got {'time': '12:00'}.",
            id="tool-output-object",
        ),
        pytest.param(
            [ASK, {"role": "assistant", "content": None}],
            "messages[1].content must be a string, got None.",
            id="null-content-without-calls",
        ),
        pytest.param(
            [ASK, {"role": "assistant"}],
            "messages[1].content must be a string, got None.",
            id="no-content-without-calls",
        ),
        pytest.param(
            [ASK, {**CALLING, "tool_calls": []}],
            "messages[1].tool_calls must be a non-empty list of calls, got [].",
            id="empty-calls",
        ),
        pytest.param(
            [ASK, {**CALLING, "tool_calls": call()}],
            "messages[1].tool_calls must be a non-empty list of calls, "
            f"got {repr(call())[:39]}….",
            id="calls-not-a-list",
        ),
        pytest.param(
            [ASK, {**CALLING, "content": ["Let me look."]}],
            "messages[1].content must be a string or null, got ['Let me look.'].",
            id="content-beside-calls-not-a-string",
        ),
        pytest.param(
            [ASK, {**CALLING, "tool_calls": ["now()"]}],
            "messages[1].tool_calls[0] must be an object, got 'now()'.",
            id="call-not-an-object",
        ),
        pytest.param(
            [ASK, calling(call(7))],
            f"messages[1].tool_calls[0].id {ID_RULE}, got 7.",
            id="id-not-a-string",
        ),
        pytest.param(
            [ASK, calling(call("x" * 257))],
            f"messages[1].tool_calls[0].id {ID_RULE}, got '{'x' * 38}….",
            id="id-too-long",
        ),
        pytest.param(
            [ASK, calling({**call(), "type": "code_interpreter"})],
            "messages[1].tool_calls[0].type must be 'function', "
            "got 'code_interpreter'.",
            id="type-not-function",
        ),
        pytest.param(
            [ASK, calling({"id": "a", "function": {}})],
            "messages[1].tool_calls[0].type must be 'function', got None.",
            id="no-type",
        ),
        pytest.param(
            [ASK, calling({**call(), "function": "now"})],
            "messages[1].tool_calls[0].function must be an object with 'name' and "
            "'arguments', got 'now'.",
            id="function-not-an-object",
        ),
        pytest.param(
            [ASK, calling(call(name="what time"))],
            f"messages[1].tool_calls[0].function.name {NAME_RULE}, got 'what time'.",
            id="name-with-a-space",
        ),
        pytest.param(
            [ASK, calling(call(name=""))],
            f"messages[1].tool_calls[0].function.name {NAME_RULE}, got ''.",
            id="empty-name",
        ),
        pytest.param(
            [ASK, calling(call(name="n" * 65))],
            f"messages[1].tool_calls[0].function.name {NAME_RULE}, got '{'n' * 38}….",
            id="name-too-long",
        ),
        pytest.param(
            [ASK, calling(call(name="now\n"))],
            f"messages[1].tool_calls[0].function.name {NAME_RULE}, got 'now\\n'.",
            id="name-with-a-trailing-newline",
        ),
        pytest.param(
            [ASK, calling(call(arguments={"tz": "UTC"}))],
            "messages[1].tool_calls[0].function.arguments must be a string (the "
            "arguments' JSON as text), got {'tz': 'UTC'}.",
            id="arguments-an-object",
        ),
        pytest.param(
            [ASK, calling({**call(), "function": {"name": "f"}})],
            "messages[1].tool_calls[0].function.arguments must be a string (the "
            "arguments' JSON as text), got None.",
            id="no-arguments",
        ),
        pytest.param(
            [{**ASK, "tool_calls": [call()]}],
            "messages[0].tool_calls belongs only in a message of role "
            "'assistant', not 'user'.",
            id="calls-in-a-user-message",
        ),
        pytest.param(
            [ASK, CALLING, {**answer(), "tool_calls": [call("b")]}],
            "messages[2].tool_calls belongs only in a message of role "
            "'assistant', not 'tool'.",
            id="calls-in-a-tool-message",
        ),
        pytest.param(
            [ASK, {**CALLING, "tool_call_id": "call_1"}],
            "messages[1].tool_call_id belongs only in a message of role "
            "'tool', not 'assistant'.",
            id="call-id-in-an-assistant-message",
        ),
        pytest.param(
            [{"role": "function", "name": "now", "content": "12:00"}],
            "messages[0].role must be one of ['assistant', 'developer', 'system', "
            "'tool', 'user'], got 'function'.",
            id="legacy-function-role",
        ),
    ],
)
def test_a_bad_tool_history_is_a_400_naming_the_message_and_field(
    messages: list[object], message: str
) -> None:
    assert refusal_of(messages) == message


@pytest.mark.parametrize(
    ("messages", "total"),
    [
        pytest.param([ASK, calling(call(arguments="a" * 90))], 106, id="arguments"),
        pytest.param([ASK, CALLING, answer(output="o" * 90)], 108, id="tool-output"),
        pytest.param(
            [ASK, {**CALLING, "content": "c" * 90}, answer()], 113, id="content"
        ),
    ],
)
def test_every_text_of_a_tool_history_counts_toward_the_limit(
    messages: list[object], total: int
) -> None:
    assert refusal_of(messages) == (
        f"The messages hold {total} characters; the limit is {LIMIT}."
    )
    assert messages_from_json({"messages": messages}, "prompt", total)


def test_a_history_of_empty_texts_and_empty_arguments_is_empty() -> None:
    messages = [{**calling(call(arguments="")), "content": ""}]
    assert refusal_of(messages) == "Every message is empty: give some content."
