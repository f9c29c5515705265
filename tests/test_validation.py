"""Request validation: any input gives messages or the contract's 400/415, no crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.streaming import StreamError
from shared.validation import json_body, messages_from_json, prompt_from_query

LIMIT = 100
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4)
    ),
    max_leaves=12,
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "wizard", 3]) | JSON_VALUES,
            "content": st.text(max_size=60) | JSON_VALUES,
        }
    ),
    max_size=4,
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
        assert messages and all(set(m) == {"role", "content"} for m in messages)
        assert sum(len(m["content"]) for m in messages) <= LIMIT


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


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=120), max_size=3))
def test_any_query_gives_a_prompt_or_a_400(query: dict[str, str]) -> None:
    try:
        prompt = prompt_from_query(query, LIMIT)
    except StreamError as error:
        assert error.status == 400
    else:
        assert prompt == query["prompt"] and prompt.strip()


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
