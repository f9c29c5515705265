"""Django settings that keep streaming intact and secrets in (run in-process)."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

SETTINGS_FILE = Path(__file__).resolve().parent.parent / "django_project/settings.py"
TLS_PROXY_VARIABLES = ("DJANGO_BEHIND_TLS_PROXY", "DJANGO_CSRF_TRUSTED_ORIGINS")


def test_no_middleware_buffers_or_compresses_the_stream() -> None:
    buffering = (
        "GZipMiddleware",
        "ConditionalGetMiddleware",
        "FetchFromCacheMiddleware",
    )
    for name in buffering:
        assert not any(m.endswith(name) for m in settings.MIDDLEWARE), name


def test_debug_pages_are_off_unless_asked_for() -> None:
    assert settings.DEBUG is False


@pytest.mark.django_db
def test_admin_is_mounted_at_admin(client: Client) -> None:
    response = client.get("/admin/", HTTP_HOST="127.0.0.1")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    login = client.get("/admin/login/", HTTP_HOST="127.0.0.1")
    assert login.status_code == 200 and b"Django administration" in login.content


def test_the_settings_object_never_shows_the_key() -> None:
    """Django's debug page prints settings; STREAM_SETTINGS must not carry the key."""
    from shared.config import Settings

    shown = repr(Settings.from_env({"OPENAI_API_KEY": "sk-never-shown"}))
    assert "sk-never-shown" not in shown


def settings_from(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """The settings module run anew with ``env``: Django's own stay as they are."""
    for name in TLS_PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS_FILE))


def test_plain_http_by_default_so_make_run_django_keeps_working(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = settings_from(monkeypatch)
    assert "SECURE_PROXY_SSL_HEADER" not in values
    assert values["SESSION_COOKIE_SECURE"] is values["CSRF_COOKIE_SECURE"] is False
    assert values["CSRF_TRUSTED_ORIGINS"] == []


def test_behind_a_tls_proxy_the_forwarded_scheme_is_trusted_and_cookies_secure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = settings_from(
        monkeypatch,
        DJANGO_BEHIND_TLS_PROXY="1",
        DJANGO_CSRF_TRUSTED_ORIGINS=" https://chat.example.com, http://a.test:8443 ,",
    )
    assert values["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert values["SESSION_COOKIE_SECURE"] is values["CSRF_COOKIE_SECURE"] is True
    assert values["CSRF_TRUSTED_ORIGINS"] == [
        "https://chat.example.com",
        "http://a.test:8443",
    ]


@pytest.mark.parametrize(
    ("name", "value", "quoted"),
    [
        ("DJANGO_BEHIND_TLS_PROXY", "yes", "'yes'"),
        ("DJANGO_CSRF_TRUSTED_ORIGINS", "https://a.test, chat.example.com", "'chat"),
    ],
)
def test_a_bad_proxy_setting_stops_the_server_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, quoted: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=name) as caught:
        settings_from(monkeypatch, **{name: value})
    assert quoted in str(caught.value)


def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


@pytest.mark.django_db
def test_the_stream_tools_setting_chooses_the_tools_in_code(client: Client) -> None:
    """Django's ``STREAM_TOOLS`` setting (functions or dotted paths), read at start."""
    from django.apps import apps
    from django.test import override_settings

    config = apps.get_app_config("django_project")
    try:
        with override_settings(STREAM_TOOLS=[f"{__name__}.shout"]):
            config.ready()
            response = client.post(
                "/completions/chat", {"prompt": "hi"}, content_type="application/json"
            )
            body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    finally:
        config.ready()  # the project's own tools again
    assert b'"name": "shout"' in body
    assert b'"output": "HI"' in body
