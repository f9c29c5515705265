"""Settings from the environment: a bad value stops the server at start, named.

Unit tests of ``Settings.from_env``, then the servers themselves started with such a
value: each exits at once with a log line that names the variable.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import HEADER_VALUED, Settings
from shared.streaming import comma_list
from tests.client import get_chat
from tests.conftest import FAKE_API_KEY, ServerPool
from tests.fake_upstream import Done, FakeUpstream, Text
from tests.servers import (
    ALL_KINDS,
    DJANGO_GUNICORN,
    FLASK_GUNICORN,
    Server,
    ServerKind,
)

NUMERIC = [
    "STREAM_KEEPALIVE_SECONDS",
    "STREAM_UPSTREAM_TIMEOUT_SECONDS",
    "STREAM_MAX_PROMPT_CHARS",
    "STREAM_MAX_BODY_BYTES",
    "STREAM_MAX_OUTPUT_TOKENS",
    "STREAM_UPSTREAM_MAX_RETRIES",
]
NOT_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e400", "-1", "abc", "²", "1" * 5000]
TOO_LARGE = {
    "STREAM_KEEPALIVE_SECONDS": "86401",
    "STREAM_UPSTREAM_TIMEOUT_SECONDS": "1e9",
    "STREAM_MAX_PROMPT_CHARS": "100000001",
    "STREAM_MAX_BODY_BYTES": "1073741825",
    "STREAM_MAX_OUTPUT_TOKENS": "100000001",
    "STREAM_UPSTREAM_MAX_RETRIES": "101",
}
# What a file-made secret and copy-paste put around a key.
BAD_HEADER_VALUES = [
    "sk-live-1234\n",
    "sk-live-1234\r\n",
    "sk-live\n1234",
    "sk-live-1234\x00",
    "sk-live-1234\t",
    " sk-live-1234",
    "sk-live-1234 ",
    "sk-live-1234\u00a0",
]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=lambda value: value[:12])
@pytest.mark.parametrize("name", NUMERIC)
def test_a_numeric_setting_that_is_not_a_finite_number_is_refused(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name} must be a")
    assert repr(value)[:30] in message


@pytest.mark.parametrize("name", NUMERIC)
def test_a_numeric_setting_past_its_bound_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be .* got '{TOO_LARGE[name]}'"):
        Settings.from_env({name: TOO_LARGE[name]})


def test_numbers_within_their_bounds_are_read() -> None:
    settings = Settings.from_env(
        {
            "STREAM_KEEPALIVE_SECONDS": "86400",
            "STREAM_UPSTREAM_TIMEOUT_SECONDS": " 0.25 ",
            "STREAM_MAX_PROMPT_CHARS": "100000000",
            "STREAM_MAX_BODY_BYTES": "1",
            "STREAM_MAX_OUTPUT_TOKENS": "7",
            "STREAM_UPSTREAM_MAX_RETRIES": "0",
        }
    )
    assert settings.keepalive_seconds == 86400.0
    assert settings.upstream_timeout_seconds == 0.25
    assert settings.max_prompt_chars == 100_000_000
    assert (settings.max_body_bytes, settings.max_output_tokens) == (1, 7)
    assert settings.upstream_max_retries == 0


@pytest.mark.parametrize("value", BAD_HEADER_VALUES, ids=ascii)
@pytest.mark.parametrize("name", HEADER_VALUED)
def test_a_header_value_that_cannot_be_sent_is_refused_unshown(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env({name: value})
    message = str(caught.value)
    assert message.startswith(f"{name} ")
    assert "sk-live" not in message and "1234" not in message


def test_a_trailing_newline_is_named_and_placed() -> None:
    with pytest.raises(ValueError) as caught:
        Settings.from_env({"OPENAI_API_KEY": "sk-live-1234\n"})
    assert str(caught.value).startswith("OPENAI_API_KEY holds '\\n' at its end")


def test_a_good_key_and_base_url_are_kept() -> None:
    settings = Settings.from_env(
        {"OPENAI_API_KEY": "sk-a_b.c-1", "OPENAI_BASE_URL": "http://[::1]:8/v1?x=y"}
    )
    assert (settings.api_key, settings.base_url) == (
        "sk-a_b.c-1",
        "http://[::1]:8/v1?x=y",
    )


@pytest.mark.parametrize(
    ("raw", "items"),
    [
        ("a.example, b.example", ["a.example", "b.example"]),
        (" a.example ,, b.example ,", ["a.example", "b.example"]),
        ("\ta.example\n", ["a.example"]),
        (" , ", []),
    ],
)
def test_list_settings_are_trimmed_and_lose_empty_items(
    raw: str, items: list[str]
) -> None:
    assert comma_list({"X": raw}, "X") == items


def test_an_unset_or_empty_list_setting_gives_its_default() -> None:
    assert comma_list({}, "X", "a,b") == ["a", "b"]
    assert comma_list({"X": ""}, "X", "a,b") == ["a", "b"]


def test_cors_origins_are_read_as_a_list_setting() -> None:
    settings = Settings.from_env({"STREAM_CORS_ORIGINS": " http://a.example/ , ,"})
    assert settings.cors_origins == frozenset({"http://a.example"})


# --- The servers ---------------------------------------------------------------


def start_fails(kind: ServerKind, env: dict[str, str], log: Path) -> str:
    """Start a server that must exit at start; its log."""
    server = Server(kind, env, log)
    try:
        with pytest.raises(RuntimeError, match="exited at start"):
            server.start()
    finally:
        server.stop()
    return server.log()


def assert_stops_with_one_line(log: str, message: str) -> None:
    """The server stopped before listening, with one line naming the setting."""
    assert f"Bad setting: {message}" in log.splitlines(), log
    assert "Traceback" not in log, log
    assert "Listening at" not in log, log


@pytest.mark.parametrize(
    ("name", "value"),
    [("STREAM_KEEPALIVE_SECONDS", "nan"), ("STREAM_UPSTREAM_TIMEOUT_SECONDS", "inf")],
)
@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_a_server_with_a_non_finite_number_exits_at_start(
    pool: ServerPool, tmp_path: Path, kind: ServerKind, name: str, value: str
) -> None:
    log = start_fails(kind, {**pool.env("plain"), name: value}, tmp_path / "log")
    message = f"{name} must be a number above 0 and at most 86400, got '{value}'"
    assert_stops_with_one_line(log, message)


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda kind: kind.name)
def test_a_server_whose_key_ends_with_a_newline_exits_at_start_unshown(
    pool: ServerPool, tmp_path: Path, kind: ServerKind
) -> None:
    env = {**pool.env("plain"), "OPENAI_API_KEY": f"{FAKE_API_KEY}\n"}
    log = start_fails(kind, env, tmp_path / "log")
    message = "OPENAI_API_KEY holds '\\n' at its end, which can't go in an HTTP header"
    assert any(line.startswith(f"Bad setting: {message}") for line in log.splitlines())
    assert "Traceback" not in log, log
    assert FAKE_API_KEY not in log


@pytest.mark.parametrize(
    "kind", [FLASK_GUNICORN, DJANGO_GUNICORN], ids=lambda kind: kind.name
)
def test_host_lists_with_spaces_after_commas_are_served(
    pool: ServerPool, upstream: FakeUpstream, tmp_path: Path, kind: ServerKind
) -> None:
    hosts = "chat.example.com, 127.0.0.1 , ,localhost"
    env = {**pool.env("plain"), "DJANGO_ALLOWED_HOSTS": hosts}
    env["FLASK_TRUSTED_HOSTS"] = hosts
    with Server(kind, env, tmp_path / "hosts.log") as server:
        script = upstream.script(Text("ok"), Done())
        for host in ("127.0.0.1", "localhost", "chat.example.com"):
            headers = {"Host": f"{host}:{server.port}"}
            response = get_chat(server, f"hi {script.marker}", headers=headers)
            assert response[0] == 200, (host, response[2])
        refused = get_chat(server, "hi", headers={"Host": "other.example"})
        assert refused[0] == 400
