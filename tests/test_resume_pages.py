"""Both pages on a resumable server (``STREAM_RESUMABLE=1``), in a real browser.

A reload mid-answer must show the whole answer once, and run the model once: the
demo page resumes after the last event it kept (``Last-Event-ID`` on its fetch,
``?lastEventId=`` on its EventSource), the useChat page asks for the chat's answer in
flight (``GET /api/chat/<id>/stream``). Closing the connection no longer stops a
resumable answer, so Stop must also say ``DELETE /streams/ANSWER``: the upstream is
then closed within a second, where the server alone would give the answer up only
after ``STREAM_RESUME_ABANDON_SECONDS``.

Both apps run under gunicorn+gevent (``resumable-redis``: an unread answer is given
up after 2 s) against the fake upstream; each test drives one page mode on one app,
so that every mode and both apps are covered once.
"""

from __future__ import annotations

import threading
import time

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from tests.chromium import WatchedPage
from tests.conftest import ServerPool
from tests.fake_upstream import (
    Done,
    FakeUpstream,
    Finish,
    Forever,
    Hold,
    Script,
    Sleep,
    Step,
    Text,
)
from tests.servers import DJANGO_GUNICORN, FLASK_GUNICORN, Server, ServerKind

WAIT_MS = 10_000  # for anything the page should show
WORDS = [f"w{index} " for index in range(30)]
WHOLE = "".join(WORDS)
# Every text the last answer showed, from the page's first script on: a part shown
# twice, or out of order, is a text that is no prefix of the whole answer.
WATCH_ANSWERS = """selector => {
    window.seen = [];
    new MutationObserver(() => {
        const texts = [...document.querySelectorAll(selector)].map(n => n.textContent);
        const text = texts.join("|");
        if (text && window.seen.at(-1) !== text) window.seen.push(text);
    }).observe(document, { childList: true, subtree: true, characterData: true });
}"""
DEMO_ANSWERS = "#conversation li.assistant .text"
DEMO_LAST_ANSWER = "#conversation li.assistant:last-child .text"
USE_CHAT_ANSWERS = "[data-testid=message-assistant] [data-testid=text]"
USE_CHAT_LAST_ANSWER = "[data-testid=message-assistant]:last-child [data-testid=text]"


def slow_answer(reloaded: threading.Event) -> list[Step]:
    """``WHOLE``, a word every 50 ms, held after the fifth until the test has
    reloaded the page: on a busy machine the reload could come after the end."""
    steps: list[Step] = []
    for index, word in enumerate(WORDS):
        steps += [Text(word), Sleep(0.05)]
        if index == 4:
            steps.append(Hold(reloaded))
    return [*steps, Finish("stop"), Done()]


@pytest.fixture(scope="module")
def resumable(pool: ServerPool) -> dict[str, Server]:
    """Both apps under gunicorn+gevent, their answers' logs in the session's Redis."""
    kinds = (FLASK_GUNICORN, DJANGO_GUNICORN)
    return {kind.name: pool.get(kind, "resumable-redis") for kind in kinds}


def open_page(
    browser: Browser, server: Server, path: str, answers: str
) -> tuple[WatchedPage, list[Request]]:
    """A fresh page watching its answers, and the requests it makes (in order)."""
    page = browser.new_context().new_page()
    page.add_init_script(script=f"({WATCH_ANSWERS})({answers!r})")
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))
    page.goto(f"http://127.0.0.1:{server.port}{path}")
    return WatchedPage(page), requests


def assert_shown_once(page: Page) -> None:
    """Since the last load, every text of the last answer was a prefix of the whole
    answer."""
    seen: list[str] = page.evaluate("window.seen")
    assert seen, "the page showed no answer"
    assert all(WHOLE.startswith(text) for text in seen), seen


def assert_upstream_closed_within_a_second(
    script: Script, clicked: float, requests: list[Request]
) -> None:
    """Stop closed the upstream within a second of the click, by the page's DELETE."""
    script.wait_disconnected()
    disconnected_at = script.wait_for_request().disconnected_at
    assert disconnected_at is not None and disconnected_at - clicked < 1.0
    answers = [stream_id(r) for r in requests if r.method != "DELETE"]
    stops = [r for r in requests if r.method == "DELETE"]
    assert [r.url.partition("/streams/")[2] for r in stops] == [a for a in answers if a]
    response = stops[0].response()
    assert response is not None and response.status == 204


def stream_id(request: Request) -> str | None:
    """The X-Stream-Id that the response to ``request`` said, if any."""
    response = request.response()
    return response.headers.get("x-stream-id") if response else None


def assert_clean(watched: WatchedPage) -> None:
    assert watched.console_errors == []
    assert watched.dialogs == []
    watched.page.context.close()


# ---- The demo page ---------------------------------------------------------------


def kind_or_mode(value: ServerKind | str) -> str:
    """A test id's part: the server's name, or the page's way of reading."""
    return value.name if isinstance(value, ServerKind) else value


def ask_demo(page: Page, prompt: str, mode: str) -> None:
    page.check(f"input[name=mode][value={mode}]")
    box = page.get_by_role("textbox", name="Message")
    box.fill(prompt)
    box.press("Enter")


@pytest.mark.parametrize(
    ("kind", "mode"),
    [(FLASK_GUNICORN, "fetch"), (DJANGO_GUNICORN, "eventsource")],
    ids=kind_or_mode,
)
def test_demo_page_shows_the_whole_answer_once_after_a_reload_mid_answer(
    browser: Browser,
    resumable: dict[str, Server],
    upstream: FakeUpstream,
    kind: ServerKind,
    mode: str,
) -> None:
    server = resumable[kind.name]
    watched, requests = open_page(browser, server, "/", DEMO_LAST_ANSWER)
    page = watched.page
    # The second request repeats the first's marker: its own script comes first.
    reloaded = threading.Event()
    script = upstream.script(*slow_answer(reloaded))
    first = upstream.script(Text("Paris."), Done())
    ask_demo(page, f"Capital of France? {first.marker}", mode)
    expect(page.locator("#status")).to_have_text("Done.", timeout=WAIT_MS)
    ask_demo(page, f"Count slowly {script.marker}", mode)
    answers = page.locator(DEMO_ANSWERS)
    # At its first word: the page's throttled save of the answer may not have run.
    expect(answers.last).to_contain_text("w0 ", timeout=WAIT_MS)
    resumed_from = len(requests)
    page.reload()
    reloaded.set()
    expect(page.locator("#status")).to_have_text("Done.", timeout=WAIT_MS)
    expect(answers).to_have_text(["Paris.", WHOLE])
    expect(page.locator("#conversation li")).to_have_count(4)  # 2 questions, answers
    assert_shown_once(page)
    resumed = [r for r in requests[resumed_from:] if "ompletion" in r.url]
    assert len(resumed) == 1, [r.url for r in resumed]
    if mode == "fetch":
        assert resumed[0].headers["last-event-id"].rpartition(".")[2].isdigit()
        assert script.wait_for_request().json["messages"][:2] == [
            {"role": "user", "content": f"Capital of France? {first.marker}"},
            {"role": "assistant", "content": "Paris."},
        ]
    else:
        assert "lastEventId=" in resumed[0].url
    assert len(script.requests) == 1
    assert len(first.requests) == 1
    assert_clean(watched)


@pytest.mark.parametrize(
    ("kind", "mode"),
    [(FLASK_GUNICORN, "eventsource"), (DJANGO_GUNICORN, "fetch")],
    ids=kind_or_mode,
)
def test_demo_page_stop_closes_the_upstream_within_a_second(
    browser: Browser,
    resumable: dict[str, Server],
    upstream: FakeUpstream,
    kind: ServerKind,
    mode: str,
) -> None:
    watched, requests = open_page(browser, resumable[kind.name], "/", DEMO_ANSWERS)
    page = watched.page
    script = upstream.script(Forever("tick ", interval=0.05))
    ask_demo(page, f"Go on forever {script.marker}", mode)
    expect(page.locator(DEMO_ANSWERS)).to_contain_text("tick tick", timeout=WAIT_MS)
    clicked = time.monotonic()
    page.get_by_role("button", name="Stop").click()
    assert_upstream_closed_within_a_second(script, clicked, requests)
    expect(page.locator("#status")).to_have_text("Stopped.")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    assert_clean(watched)


# ---- The useChat page ------------------------------------------------------------


def ask_use_chat(page: Page, prompt: str) -> None:
    page.get_by_role("textbox", name="Message").fill(prompt)
    page.get_by_role("button", name="Send").click()


@pytest.mark.parametrize(
    "kind", [FLASK_GUNICORN, DJANGO_GUNICORN], ids=lambda kind: str(kind.name)
)
def test_use_chat_shows_the_whole_answer_once_after_a_reload_mid_answer(
    browser: Browser,
    resumable: dict[str, Server],
    upstream: FakeUpstream,
    kind: ServerKind,
) -> None:
    server = resumable[kind.name]
    watched, requests = open_page(browser, server, "/use-chat", USE_CHAT_LAST_ANSWER)
    page = watched.page
    # The second request repeats the first's marker: its own script comes first.
    reloaded = threading.Event()
    script = upstream.script(*slow_answer(reloaded))
    first = upstream.script(Text("Paris."), Finish("stop"), Done())
    ask_use_chat(page, f"Capital of France? {first.marker}")
    answers = page.locator(USE_CHAT_ANSWERS)
    expect(answers).to_have_text(["Paris."], timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    ask_use_chat(page, f"Count slowly {script.marker}")
    expect(answers.last).to_contain_text("w3 ", timeout=WAIT_MS)
    resumed_from = len(requests)
    page.reload()
    reloaded.set()
    expect(answers).to_have_text(["Paris.", WHOLE], timeout=WAIT_MS)
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    questions = page.get_by_test_id("message-user").get_by_test_id("text")
    expect(questions).to_have_text(
        [f"Capital of France? {first.marker}", f"Count slowly {script.marker}"]
    )
    expect(page.get_by_test_id("meta")).to_have_text(["finish: stop"] * 2)
    assert_shown_once(page)
    resumed = [r.url for r in requests[resumed_from:] if "/api/chat" in r.url]
    assert len(resumed) == 1 and resumed[0].endswith("/stream"), resumed
    assert len(script.requests) == 1
    assert len(first.requests) == 1
    assert_clean(watched)


@pytest.mark.parametrize(
    "kind", [FLASK_GUNICORN, DJANGO_GUNICORN], ids=lambda kind: str(kind.name)
)
def test_use_chat_stop_closes_the_upstream_within_a_second(
    browser: Browser,
    resumable: dict[str, Server],
    upstream: FakeUpstream,
    kind: ServerKind,
) -> None:
    server = resumable[kind.name]
    watched, requests = open_page(browser, server, "/use-chat", USE_CHAT_ANSWERS)
    page = watched.page
    script = upstream.script(Forever("tick ", interval=0.05))
    ask_use_chat(page, f"Go on forever {script.marker}")
    expect(page.locator(USE_CHAT_ANSWERS)).to_contain_text("tick tick", timeout=WAIT_MS)
    clicked = time.monotonic()
    page.get_by_role("button", name="Stop").click()
    assert_upstream_closed_within_a_second(script, clicked, requests)
    expect(page.get_by_test_id("stopped")).to_have_text("Stopped.")
    assert_clean(watched)
