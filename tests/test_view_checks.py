"""What a copied view checks with the core alone: ``check_request``, its settings.

In-process units on WSGI environs; the same checks through real servers, in apps
made from the README, are ``tests/test_copy_from_readme.py``'s.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from shared.streaming import (
    StreamError,
    StreamSettings,
    check_request,
    check_site,
    client_socket_of,
)

SETTINGS = StreamSettings()
CROSS_SITE = "Cross-site requests may not use this endpoint"


def environ(method: str = "GET", **headers: str) -> dict[str, Any]:
    """A WSGI environ for 127.0.0.1:8000, with these request headers."""
    env: dict[str, Any] = {"REQUEST_METHOD": method, "HTTP_HOST": "127.0.0.1:8000"}
    for name, value in headers.items():
        key = name.upper()
        env[key if key == "CONTENT_LENGTH" else f"HTTP_{key}"] = value
    return env


def refusal(env: dict[str, Any], settings: StreamSettings = SETTINGS) -> StreamError:
    with pytest.raises(StreamError) as info:
        check_request(env, settings)
    return info.value


@pytest.mark.parametrize("method", ["HEAD", "POST", "DELETE", "OPTIONS"])
def test_another_method_than_the_views_is_refused(method: str) -> None:
    error = refusal(environ(method))
    assert (error.status, error.type) == (405, "method_not_allowed")
    assert error.headers == {"Allow": "GET"}
    assert error.message == f"Use GET here, got {method!r}."


def test_a_post_view_names_its_method() -> None:
    check_request(environ("POST"), SETTINGS, methods=("POST",))
    with pytest.raises(StreamError) as info:
        check_request(environ("GET"), SETTINGS, methods=("POST",))
    assert info.value.headers == {"Allow": "POST"}


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec_Fetch_Site": "cross-site"},
        {"Origin": "http://127.0.0.1:8000", "Sec_Fetch_Site": "cross-site"},
    ],
)
def test_a_request_from_another_site_is_refused(headers: dict[str, str]) -> None:
    error = refusal(environ(**headers))
    assert (error.status, error.type) == (403, "cross_site_request")
    assert error.message.startswith(CROSS_SITE)
    assert "(Origin" not in error.message  # no port hint: another host


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl, scripts
        {"Origin": "http://127.0.0.1:8000"},
        {"Origin": "https://127.0.0.1:8000"},  # behind a TLS-terminating proxy
        {"Origin": "http://127.0.0.1:8000", "Sec_Fetch_Site": "same-origin"},
    ],
)
def test_the_same_site_and_non_browsers_pass(headers: dict[str, str]) -> None:
    check_request(environ(**headers), SETTINGS)


def test_a_listed_origin_may_call_from_another_site() -> None:
    settings = StreamSettings(cors_origins=frozenset({"https://app.example"}))
    check_request(environ(Origin="https://app.example"), settings)
    assert refusal(environ(Origin="https://other.example"), settings).status == 403


def test_a_proxy_that_drops_the_port_is_named_in_the_refusal() -> None:
    """nginx's ``Host $host`` drops the port the page's own Origin keeps."""
    headers = {"Origin": "http://127.0.0.1:8180", "Host": "127.0.0.1"}
    with pytest.raises(StreamError) as info:
        check_site(headers)
    assert info.value.message == (
        f"{CROSS_SITE}; list the origin in STREAM_CORS_ORIGINS to allow it. (Origin "
        "'127.0.0.1:8180' and Host '127.0.0.1' differ only in their port: a proxy in "
        "front must pass the Host header on whole, e.g. nginx's "
        "'proxy_set_header Host $http_host;')"
    )


def test_a_body_over_the_limit_is_refused_from_its_length() -> None:
    settings = StreamSettings(max_body_bytes=10)
    check_request(environ("POST", Content_Length="10"), settings, methods=["POST"])
    with pytest.raises(StreamError) as info:
        check_request(environ("POST", Content_Length="11"), settings, methods=["POST"])
    assert (info.value.status, info.value.type) == (413, "payload_too_large")


def test_settings_come_from_the_stream_variables() -> None:
    settings = StreamSettings.from_env(
        {
            "STREAM_KEEPALIVE_SECONDS": "2.5",
            "STREAM_MAX_PROMPT_CHARS": "100",
            "STREAM_CORS_ORIGINS": "https://a.example/, https://b.example",
            "STREAM_UPSTREAM_MAX_RETRIES": "0",
        }
    )
    assert settings == StreamSettings(
        keepalive_seconds=2.5,
        max_prompt_chars=100,
        cors_origins=frozenset({"https://a.example", "https://b.example"}),
        upstream_max_retries=0,
    )
    assert StreamSettings.from_env({}) == StreamSettings()


def test_a_bad_setting_stops_a_server_with_one_line() -> None:
    with pytest.raises(ValueError, match="STREAM_KEEPALIVE_SECONDS"):
        StreamSettings.from_env({"STREAM_KEEPALIVE_SECONDS": "abc"})
    with pytest.raises(SystemExit) as info:
        StreamSettings.from_env_or_exit({"STREAM_KEEPALIVE_SECONDS": "abc"})
    assert str(info.value) == (
        "Bad setting: STREAM_KEEPALIVE_SECONDS must be a number above 0 and at most "
        "86400, got 'abc'"
    )


def test_the_client_socket_is_gunicorns_or_werkzeugs() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert client_socket_of({"gunicorn.socket": left}) is left
        assert client_socket_of({"werkzeug.socket": right}) is right
        assert client_socket_of({}) is None  # runserver: noticed at the next write
