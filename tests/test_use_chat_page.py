"""The useChat example page (``chat_ui/``, served at ``/use-chat``) in a real browser.

The page is the AI SDK's own ``useChat`` with its default transport, so what these
tests see is what the SDK makes of ``POST /api/chat``'s stream: both apps run under
gunicorn+gevent (servers of the ``tools`` configuration, which run
``tests/tools.py``'s functions) against the fake upstream, and Debian's Chromium
drives the page on a phone-sized screen. The page must have been built (``make
chat-ui``, which ``make test`` runs): without it, or without the route, these fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import (
    Browser,
    Locator,
    ViewportSize,
    expect,
)

from tests.chromium import WatchedPage
from tests.conftest import ServerPool
from tests.fake_upstream import (
    Done,
    FakeUpstream,
    Finish,
    Forever,
    FunctionCall,
    Reasoning,
    Sleep,
    Text,
    Usage,
)
from tests.servers import DJANGO_GUNICORN, FLASK_GUNICORN, Server

WAIT_MS = 10_000  # for anything the page should show
MARKUP = "<img src=x onerror=alert(1)>"
PHONE: ViewportSize = {"width": 360, "height": 640}
# Every change of the last answer's text, with when it happened: what a user saw.
WATCH_THE_ANSWER = """() => {
    window.seen = [];
    const list = document.querySelector("[data-testid=messages]");
    new MutationObserver(() => {
        const texts = list.querySelectorAll(
            "[data-testid=message-assistant] [data-testid=text]");
        const text = texts.length ? texts[texts.length - 1].textContent : "";
        const last = window.seen[window.seen.length - 1];
        if (text && (!last || last.text !== text)) {
            window.seen.push({ text, at: performance.now() });
        }
    }).observe(list, { childList: true, subtree: true, characterData: true });
}"""


class UseChatPage(WatchedPage):
    """The useChat example page, driven as a user would."""

    def open(self, server: Server) -> UseChatPage:
        """Load the page; a clear failure if it isn't served (not built, no route)."""
        statuses: dict[str, int] = {}
        self.page.on("response", lambda r: statuses.update({r.url: r.status}))
        url = f"http://127.0.0.1:{server.port}/use-chat"
        self.page.goto(url)  # returns after the page's script and style loaded
        for name in ["", "/app.js", "/app.css"]:
            status = statuses.get(url + name)
            assert status == 200, (
                f"GET /use-chat{name} answered {status}: is the page built "
                "(`make chat-ui`) and the route there?"
            )
        return self

    def send(self, prompt: str) -> None:
        self.page.get_by_role("textbox", name="Message").fill(prompt)
        self.page.get_by_role("button", name="Send").click()

    @property
    def answer(self) -> Locator:
        """The last assistant message, whole."""
        return self.page.get_by_test_id("message-assistant").last

    def parts(self) -> list[str]:
        """What the last answer shows, in order, by test id."""
        ids: list[str] = self.answer.locator(":scope > [data-testid]").evaluate_all(
            "els => els.map(el => el.dataset.testid)"
        )
        return ids


@pytest.fixture(
    params=[FLASK_GUNICORN, DJANGO_GUNICORN], ids=lambda kind: str(kind.name)
)
def chat(
    request: pytest.FixtureRequest, browser: Browser, pool: ServerPool
) -> Iterator[UseChatPage]:
    """The page of each app, on a phone; afterwards, no console error or dialog."""
    context = browser.new_context(viewport=PHONE, is_mobile=True)
    chat = UseChatPage(context.new_page()).open(pool.get(request.param, "tools"))
    yield chat
    context.close()
    assert chat.console_errors == []
    assert chat.dialogs == []


def test_thinking_a_tool_run_and_the_answer_stream_in_as_text(
    chat: UseChatPage, upstream: FakeUpstream
) -> None:
    # The server runs `add`, then asks again: that request repeats the marker.
    answer = upstream.script(
        Text("It is "),
        Sleep(0.4),
        Text("5. "),
        Sleep(0.4),
        Text(MARKUP),
        Finish("stop"),
        Usage(30, 4),
        Done(),
    )
    first = upstream.script(
        Reasoning(f"Add them with the tool. {MARKUP}"),
        FunctionCall("call_1", "add", '{"a": 2, "b": 3}'),
        Finish("tool_calls"),
        Usage(10, 6),
        Done(),
        then=answer,
    )
    chat.page.evaluate(WATCH_THE_ANSWER)
    chat.send(f"What is 2 + 3? {first.marker}")
    reasoning = chat.answer.get_by_test_id("reasoning")
    expect(reasoning.locator(".reasoning-text")).to_have_text(
        f"Add them with the tool. {MARKUP}", timeout=WAIT_MS
    )
    tool = chat.answer.get_by_test_id("tool")
    expect(tool.get_by_test_id("tool-name")).to_have_text("add", timeout=WAIT_MS)
    expect(tool.get_by_test_id("tool-input")).to_have_text('{\n  "a": 2,\n  "b": 3\n}')
    expect(tool.get_by_test_id("tool-output")).to_have_text("5")
    expect(chat.answer.get_by_test_id("text")).to_have_text(
        f"It is 5. {MARKUP}", timeout=WAIT_MS
    )
    expect(chat.answer.get_by_test_id("meta")).to_have_text("finish: stop · 50 tokens")
    assert chat.parts() == ["reasoning", "tool", "text", "meta"]
    expect(reasoning.locator("summary")).to_have_text("Thinking")
    seen = chat.page.evaluate("window.seen")
    texts = [s["text"] for s in seen]
    assert texts == ["It is ", "It is 5. ", f"It is 5. {MARKUP}"], seen
    assert seen[2]["at"] - seen[0]["at"] > 500, seen  # it grew as it came
    assert chat.page.get_by_test_id("messages").locator("img").count() == 0
    expect(chat.page.get_by_role("button", name="Regenerate")).to_be_enabled()
    # On a phone: nothing wider than the screen, every control named.
    assert chat.page.evaluate("document.documentElement.scrollWidth <= innerWidth")
    unnamed = chat.page.locator("textarea, button").evaluate_all(
        "els => els.filter(el => !el.labels?.length && !el.textContent.trim()).length"
    )
    assert unnamed == 0


def test_stop_closes_the_upstream_within_a_second_and_regenerate_asks_again(
    chat: UseChatPage, upstream: FakeUpstream
) -> None:
    # Regenerate sends the question again, which repeats the marker: ``then``.
    again = upstream.script(Text("A fresh answer."), Finish("stop"), Done())
    script = upstream.script(Forever("tick ", interval=0.05), then=again)
    chat.send(f"Go on forever {script.marker}")
    text = chat.answer.get_by_test_id("text")
    expect(text).to_contain_text("tick tick", timeout=WAIT_MS)
    clicked = time.monotonic()
    chat.page.get_by_role("button", name="Stop").click()
    script.wait_disconnected()
    disconnected_at = script.wait_for_request().disconnected_at
    assert disconnected_at is not None and disconnected_at - clicked < 1.0
    expect(chat.answer.get_by_test_id("stopped")).to_have_text("Stopped.")
    expect(chat.page.get_by_role("status")).to_have_text("Stopped.")
    expect(chat.page.get_by_role("button", name="Stop")).to_have_count(0)
    chat.page.get_by_role("button", name="Regenerate").click()
    expect(text).to_have_text("A fresh answer.", timeout=WAIT_MS)
    expect(chat.page.get_by_test_id("message-assistant")).to_have_count(1)
    expect(chat.answer.get_by_test_id("stopped")).to_have_count(0)
    # The stopped answer is not part of the question asked again.
    assert [m["role"] for m in script.requests[1].json["messages"]] == ["user"]
