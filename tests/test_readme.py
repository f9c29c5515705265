"""The README says what the code does: its tables and its copyable views are checked."""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from shared import config, streaming
from tests.client import parse_sse, texts
from tests.fake_upstream import Done, FakeUpstream, Finish, Raw, Text, Usage

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def table_rows(heading_text: str) -> dict[str, list[str]]:
    """The rows of the first table after ``heading_text``, keyed by their first cell."""
    section = README[README.index(heading_text) :]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    start = section.splitlines().index(lines[0])
    rows: dict[str, list[str]] = {}
    for line in section.splitlines()[start + 2 :]:  # after the header and its rule
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_configuration_table_matches_the_defaults_in_code() -> None:
    rows = table_rows("## Configuration")
    defaults = {
        "OPENAI_MODEL": config.DEFAULT_MODEL,
        "OPENAI_COMPLETION_MODEL": config.DEFAULT_COMPLETION_MODEL,
        "OPENAI_CHAT_API": config.DEFAULT_CHAT_API,
        "STREAM_KEEPALIVE_SECONDS": f"{streaming.DEFAULT_KEEPALIVE_SECONDS:g}",
        "STREAM_MAX_PROMPT_CHARS": str(streaming.DEFAULT_MAX_PROMPT_CHARS),
        "STREAM_UPSTREAM_TIMEOUT_SECONDS": (
            f"{streaming.DEFAULT_UPSTREAM_TIMEOUT_SECONDS:g}"
        ),
    }
    for name in ("DJANGO_ALLOWED_HOSTS", "FLASK_TRUSTED_HOSTS"):
        defaults[name] = config.DEFAULT_ALLOWED_HOSTS
    for name, default in defaults.items():
        assert rows[name][-1] == f"`{default}`", name
    read_in_code = set(
        re.findall(
            r'"((?:OPENAI|STREAM|DJANGO)_[A-Z_]+)"',
            (ROOT / "shared/config.py").read_text()
            + (ROOT / "shared/streaming.py").read_text(),
        )
        + re.findall(
            r'"(DJANGO_[A-Z_]+)"', (ROOT / "django_project/settings.py").read_text()
        )
        + re.findall(r'"(FLASK_[A-Z_]+)"', (ROOT / "flask_app/__init__.py").read_text())
    )
    assert "FLASK_TRUSTED_HOSTS" in read_in_code
    assert read_in_code <= set(rows), read_in_code - set(rows)


def test_routes_table_matches_the_url_patterns() -> None:
    from django_project.urls import urlpatterns

    documented = {key.split(" ", 1)[1] for key in table_rows("## Routes")}
    mounted = {
        "/" + re.sub(r"<\w+:(\w+)>", r"<\1>", str(p.pattern))  # <str:name> as <name>
        for p in urlpatterns
        if str(p.pattern) != "admin/"
    }
    assert documented == mounted


LAYOUT_FOLDERS = ("shared", "flask_app", "django_project", "examples")


def needs_a_row(path: Path) -> bool:
    """Every module does, but a package's ``__init__.py`` holding only a docstring."""
    if path.name != "__init__.py":
        return True
    tree = ast.parse(path.read_text())
    return len(tree.body) > (1 if ast.get_docstring(tree) is not None else 0)


def test_the_layout_table_names_every_module() -> None:
    section = README[README.index("## Layout") :]
    named = set(re.findall(r"`([^`]+)`", section))
    modules = {
        path.relative_to(ROOT).as_posix()
        for folder in LAYOUT_FOLDERS
        for path in (ROOT / folder).rglob("*.py")
        if needs_a_row(path)
    }
    assert "flask_app/__init__.py" in modules
    assert modules - named == set()


def test_the_core_imports_nothing_else_from_the_repo() -> None:
    tree = ast.parse((ROOT / "shared/streaming.py").read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    local = {path.name.removesuffix(".py") for path in ROOT.iterdir()}
    assert not imported & local, imported & local


EXAMPLES = {
    "Flask": "flask_view",
    "Django": "django_view",
    "Flask, with a tool": "flask_tools_view",
    "Django, with a tool": "django_tools_view",
}


def readme_block(framework: str) -> str:
    """The Python block after the README's ``**Flask**`` or ``**Django**``."""
    section = README[README.index(f"**{framework}**") :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize(("framework", "name"), EXAMPLES.items())
def test_the_readme_shows_each_example_as_it_is(framework: str, name: str) -> None:
    assert readme_block(framework) == (ROOT / "examples" / f"{name}.py").read_text()


@pytest.fixture
def copied_core(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory holding ``streaming.py`` alone, importable as ``streaming``."""
    shutil.copy(ROOT / "shared/streaming.py", tmp_path / "streaming.py")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("streaming", None)
    for name in EXAMPLES.values():
        example = sys.modules.pop(name, None)
        if example is not None and example.client.cache_info().currsize:
            example.client().close()  # its pooled connection to the fake upstream


def copy_example(directory: Path, name: str) -> ModuleType:
    """``examples/NAME.py`` copied into ``directory`` and imported from there."""
    shutil.copy(ROOT / "examples" / f"{name}.py", directory / f"{name}.py")
    module = importlib.import_module(name)
    assert module.__file__ == str(directory / f"{name}.py")
    return module


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-readme-test")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        yield fake


def test_the_flask_example_streams_with_only_the_core_beside_it(
    copied_core: Path, fake_openai: FakeUpstream
) -> None:
    script = fake_openai.script(Text("Hi\n"), Text("there"), Usage(1, 2), Done())
    from flask import Flask

    view = copy_example(copied_core, "flask_view")
    app = Flask(__name__)
    app.register_blueprint(view.bp)
    client = app.test_client()
    query = {"prompt": f"x {script.marker}"}
    response = client.get("/chat", query_string=query)
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert texts(parse_sse(response.get_data())) == ["Hi\n", "there"]
    response.close()
    assert len(script.requests) == 1
    head = client.head("/chat", query_string=query)
    assert (head.status_code, head.headers.get("Allow")) == (405, "GET")
    assert len(script.requests) == 1  # a HEAD costs no completion
    response = client.get("/chat?prompt=")
    assert response.status_code == 400
    assert response.json == {
        "error": {
            "message": "Give a 'prompt' of 1 to 32000 characters.",
            "type": "invalid_request_error",
        }
    }


@pytest.mark.django_db  # closing a response sends request_finished, which may touch it
def test_the_django_example_streams_with_only_the_core_beside_it(
    copied_core: Path, fake_openai: FakeUpstream
) -> None:
    from django.test import RequestFactory

    script = fake_openai.script(Text("Hi\n"), Text("there"), Done())
    view = copy_example(copied_core, "django_view")
    query = {"prompt": f"x {script.marker}"}
    response = view.chat(RequestFactory().get("/chat", query))
    body = b"".join(response.streaming_content)
    response.close()
    assert texts(parse_sse(body)) == ["Hi\n", "there"]
    assert view.chat(RequestFactory().head("/chat", query)).status_code == 405
    assert len(script.requests) == 1  # a HEAD costs no completion
    response = view.chat(RequestFactory().get("/chat"))
    assert response.status_code == 400
    assert json.loads(response.content)["error"]["type"] == "invalid_request_error"


def test_the_flask_tool_example_runs_its_tool_mid_answer(
    copied_core: Path, fake_openai: FakeUpstream
) -> None:
    from flask import Flask

    call = {"index": 0, "id": "c1", "type": "function"}
    call["function"] = {"name": "order_status", "arguments": '{"order_id": "A-1042"}'}
    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
    answer = fake_openai.script(Text("It shipped."), Finish("stop"), Done())
    script = fake_openai.script(
        Raw(b"data: " + json.dumps(chunk).encode() + b"\n\n"),
        Finish("tool_calls"),
        Done(),
        then=answer,
    )
    view = copy_example(copied_core, "flask_tools_view")
    app = Flask(__name__)
    app.register_blueprint(view.bp)
    response = app.test_client().get(
        "/chat-tools", query_string={"prompt": f"where is A-1042? {script.marker}"}
    )
    events = [(e.event, e.data) for e in parse_sse(response.get_data())]
    response.close()
    assert events == [
        (
            "tool_call",
            json.dumps(
                {
                    "id": "c1",
                    "name": "order_status",
                    "arguments": '{"order_id": "A-1042"}',
                }
            ),
        ),
        ("finish", '{"reason": "tool_calls"}'),
        ("tool_result", '{"id": "c1", "output": "shipped"}'),
        ("message", "It shipped."),
        ("finish", '{"reason": "stop"}'),
        ("message", "[DONE]"),
    ]
    [offered] = script.requests[0].json["tools"]
    assert offered["function"]["name"] == "order_status"
    sent = (script.requests + answer.requests)[1].json["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "c1", "content": "shipped"}
