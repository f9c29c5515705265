"""Request validation: any input gives messages or the contract's 400/415, no crash."""

from __future__ import annotations

import io
import json
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.streaming import StreamError
from shared.validation import (
    json_body,
    messages_from_json,
    prompt_from_query,
    query_fields,
    request_body,
)

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
