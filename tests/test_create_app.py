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


def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


def test_tools_given_in_code_are_offered_and_run() -> None:
    """``create_app(tools=[...])``: the demo model calls the one tool it is offered."""
    client = create_app({"STREAM_SETTINGS": Settings()}, tools=[shout]).test_client()
    body = client.post("/completions/chat", json={"prompt": "hi"}).get_data()
    assert b'event: tool_call\ndata: {"id": ' in body
    assert b'"name": "shout"' in body
    assert b'event: tool_result\ndata: {"id": ' in body
    assert b'"output": "HI"' in body


def test_a_tool_path_that_cant_be_imported_stops_the_app_with_one_line() -> None:
    with pytest.raises(SystemExit) as info:
        create_app({"STREAM_SETTINGS": Settings()}, tools=["no.such.tool"])
    assert str(info.value).startswith(
        "Bad setting: STREAM_TOOLS names 'no.such.tool', which can't be imported"
    )
