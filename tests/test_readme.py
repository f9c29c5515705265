"""The README says what the code does: its tables and its copyable views are checked."""

from __future__ import annotations

import ast
import importlib
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from shared import config
from shared.streaming import DEFAULT_KEEPALIVE_SECONDS
from tests.client import parse_sse, texts
from tests.fake_upstream import Done, FakeUpstream, Text, Usage

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
        "STREAM_KEEPALIVE_SECONDS": f"{DEFAULT_KEEPALIVE_SECONDS:g}",
        "STREAM_MAX_PROMPT_CHARS": str(config.DEFAULT_MAX_PROMPT_CHARS),
        "STREAM_UPSTREAM_TIMEOUT_SECONDS": (
            f"{config.DEFAULT_UPSTREAM_TIMEOUT_SECONDS:g}"
        ),
    }
    for name in ("DJANGO_ALLOWED_HOSTS", "FLASK_TRUSTED_HOSTS"):
        defaults[name] = config.DEFAULT_ALLOWED_HOSTS
    for name, default in defaults.items():
        assert rows[name][-1] == f"`{default}`", name
    read_in_code = set(
        re.findall(
            r'"((?:OPENAI|STREAM|DJANGO)_[A-Z_]+)"',
            (ROOT / "shared/config.py").read_text(),
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


def snippet(framework: str) -> str:
    section = README[README.index(f"**{framework}**") :]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def copied_core(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory holding ``streaming.py`` alone, importable as ``streaming``."""
    shutil.copy(ROOT / "shared/streaming.py", tmp_path / "streaming.py")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in ("streaming", "readme_flask_view", "readme_django_view"):
        sys.modules.pop(name, None)


def load(directory: Path, name: str, source: str) -> ModuleType:
    (directory / f"{name}.py").write_text(source)
    return importlib.import_module(name)


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-readme-test")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        yield fake


def test_the_flask_snippet_streams_with_only_the_core_beside_it(
    copied_core: Path, fake_openai: FakeUpstream
) -> None:
    script = fake_openai.script(Text("Hi\n"), Text("there"), Usage(1, 2), Done())
    view = load(copied_core, "readme_flask_view", snippet("Flask"))
    client = view.app.test_client()
    response = client.get("/chat", query_string={"prompt": f"x {script.marker}"})
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert texts(parse_sse(response.get_data())) == ["Hi\n", "there"]
    response.close()
    assert client.get("/chat?prompt=").status_code == 400


@pytest.mark.django_db  # closing a response sends request_finished, which may touch it
def test_the_django_snippet_streams_with_only_the_core_beside_it(
    copied_core: Path, fake_openai: FakeUpstream
) -> None:
    from django.test import RequestFactory

    script = fake_openai.script(Text("Hi\n"), Text("there"), Done())
    view = load(copied_core, "readme_django_view", snippet("Django"))
    response = view.chat(
        RequestFactory().get("/chat", {"prompt": f"x {script.marker}"})
    )
    body = b"".join(response.streaming_content)
    response.close()
    assert texts(parse_sse(body)) == ["Hi\n", "there"]
    assert view.chat(RequestFactory().get("/chat")).status_code == 400
