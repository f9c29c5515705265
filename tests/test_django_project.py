"""Django settings that keep streaming intact and secrets in (run in-process)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client


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
