"""``create_app(test_config)``: the environment first, then the caller's Flask config.

In-process, with the demo model (``Settings()``: no key, no base URL).
"""

from __future__ import annotations

import pytest

from flask_app import create_app
from shared.config import Settings


def test_test_config_is_applied_after_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLASK_TRUSTED_HOSTS", "localhost")
    config = {"STREAM_SETTINGS": Settings(), "ALLOWED_HOSTS": ["chat.example.com"]}
    client = create_app(config).test_client()
    assert client.get("/healthz", base_url="http://chat.example.com").status_code == 200
    assert client.get("/healthz", base_url="http://localhost").status_code == 400


def test_settings_in_test_config_leave_the_environment_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_CHAT_API", "telepathy")
    with pytest.raises(SystemExit, match="^Bad setting: OPENAI_CHAT_API must be"):
        create_app()
    app = create_app({"STREAM_SETTINGS": Settings()})
    assert app.test_client().get("/healthz").json == {
        "status": "ok",
        "upstream": "demo",
    }
