"""The demo page in a real browser: Debian's Chromium driven by Playwright.

Both apps run under gunicorn+gevent against the fake upstream, as in deployment; the
page is the one users open first and copy from, so each promise of it is checked
through the browser, with its effect seen at the fake upstream where it matters
(Stop cancels the upstream; a finished EventSource doesn't run the completion again).

Reasoning, refusals and finish reasons come from the fake upstream through both apps;
tool calls and their results from the demo model (no key), whose example tools the
server runs. What neither sends (markup in a tool's name, arguments that are not
JSON, a call left unrun) is fed to the page's readers as a crafted SSE body through
Playwright's request interception (``page.route``), in ``CONTRACT.md``'s shape.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import (
    Browser,
    Locator,
    expect,
)

from tests.chromium import WatchedPage
from tests.conftest import ServerPool
from tests.fake_upstream import (
    Done,
    ErrorEvent,
    FakeUpstream,
    Finish,
    Forever,
    Raw,
    Refusal,
    Sleep,
    Text,
    Usage,
)
from tests.servers import DJANGO_GUNICORN, FLASK_GUNICORN, Server

MODES = ["fetch", "eventsource", "text"]
WAIT_MS = 10_000  # for anything the page should show
MARKUP = "<img src=x onerror=alert(1)>"
SSE_MODES = ["fetch", "eventsource"]  # the modes that carry more than text
CUT_MARKS = {
    "length": "Cut off: the token limit was reached.",
    "content_filter": "Stopped by the content filter.",
}


def reasoning(delta: str, field: str = "reasoning_content") -> Raw:
    """A chat chunk with a reasoning delta: DeepSeek's field (vLLM's and Ollama's is
    ``reasoning``)."""
    choice = {"index": 0, "delta": {field: delta}, "finish_reason": None}
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake",
        "choices": [choice],
    }
    return Raw(f"data: {json.dumps(chunk)}\n\n".encode())


def sse(data: object, event: str | None = None) -> str:
    """One event as the SSE routes frame it; ``data`` is JSON unless a string."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return head + "".join(f"data: {line}\n" for line in text.split("\n")) + "\n"


class ChatPage(WatchedPage):
    """The demo page, driven as a user would."""

    def open(self, server: Server) -> ChatPage:
        self.page.goto(f"http://127.0.0.1:{server.port}/")
        return self

    def choose(self, mode: str) -> None:
        self.page.check(f"input[name=mode][value={mode}]")

    def send(self, prompt: str, mode: str = "fetch", *, new_chat: bool = False) -> None:
        """Type the prompt and press Enter, as a user does.

        The fake plays the first script whose marker is anywhere in the request, and
        the history repeats earlier markers: ``new_chat`` clears it first.
        """
        if new_chat:
            self.page.get_by_role("button", name="New chat").click()
        self.choose(mode)
        self.box.fill(prompt)
        self.box.press("Enter")

    @property
    def box(self) -> Locator:
        return self.page.get_by_role("textbox", name="Message")

    @property
    def answer(self) -> Locator:
        return self.page.locator("#conversation li.assistant .text").last

    @property
    def message(self) -> Locator:
        """The last answer, whole: thinking, text, tool calls, how it ended."""
        return self.page.locator("#conversation li.assistant").last

    def parts(self) -> list[str]:
        """The last answer's parts, in order, by class (``thinking``, ``text``...)."""
        return self.message.locator(".parts > *").evaluate_all(
            "els => els.map(el => el.className)"
        )

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    def wait_done(self) -> None:
        """Wait for the answer in flight to end well (the status says so)."""
        expect(self.page.get_by_role("button", name="Send")).to_be_enabled(
            timeout=WAIT_MS
        )
        expect(self.status).to_have_text("Done.")

    def forgive(self, pattern: str) -> None:
        """Drop the console errors that Chromium itself logs for an expected failure."""
        self.console_errors = [
            e for e in self.console_errors if not re.search(pattern, e)
        ]


@pytest.fixture(
    params=[FLASK_GUNICORN, DJANGO_GUNICORN], ids=lambda kind: str(kind.name)
)
def app(request: pytest.FixtureRequest, pool: ServerPool) -> Server:
    """Each app under gunicorn+gevent, against the plain fake upstream."""
    return pool.get(request.param)


@pytest.fixture
def chat(browser: Browser, app: Server) -> Iterator[ChatPage]:
    """A fresh page of ``app``; afterwards, no console error and no dialog."""
    context = browser.new_context()
    chat = ChatPage(context.new_page()).open(app)
    yield chat
    context.close()
    assert chat.console_errors == []
    assert chat.dialogs == []


def test_answer_appears_in_visible_steps_with_stats(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    script = upstream.script(
        Text("One "),
        Sleep(0.3),
        Text("two\n"),
        Sleep(0.3),
        Text("three"),
        Usage(9, 3),
        Done(),
    )
    # Sample the answer at every animation frame: what a user could have seen.
    chat.page.evaluate("""() => {
        window.seen = [];
        const sample = () => {
          const answers = document.querySelectorAll("#conversation li.assistant .text");
          const text = answers.length ? answers[answers.length - 1].textContent : "";
          const status = document.getElementById("status").textContent;
          const last = window.seen[window.seen.length - 1];
          if (!last || last.text !== text || last.status !== status) {
            window.seen.push({ text, status });
          }
          requestAnimationFrame(sample);
        };
        requestAnimationFrame(sample);
    }""")
    chat.send(f"Count to three {script.marker}")
    chat.wait_done()
    expect(chat.answer).to_have_text("One two\nthree")
    seen = chat.page.evaluate("window.seen")
    before_done = {s["text"] for s in seen if s["text"] and s["status"] != "Done."}
    assert {"One ", "One two\n"} <= before_done, seen
    meta = chat.page.locator("#conversation li.assistant .meta").last
    expect(meta).to_contain_text("first token after")
    expect(meta).to_contain_text("usage: 9 prompt + 3 completion = 12 tokens")


def test_history_is_sent_and_shift_enter_makes_a_new_line(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    # The history repeats the first question: no marker, the default "Hello world".
    chat.send("Capital of France?")
    chat.wait_done()
    second = upstream.script(Text("About 2 million."), Done())
    box = chat.box
    box.fill("And its population?")
    box.press("Shift+Enter")
    box.type(second.marker)
    box.press("Enter")
    chat.wait_done()
    assert second.wait_for_request().json["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Hello world"},
        {"role": "user", "content": f"And its population?\n{second.marker}"},
    ]


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_streams_the_answer_by_its_own_route(
    chat: ChatPage, upstream: FakeUpstream, mode: str
) -> None:
    routes = {
        "fetch": "/completions/chat",
        "eventsource": "/completionChat",
        "text": "/api/stream",
    }
    script = upstream.script(
        Text("Line 1\r\n"), Text("data: 🙂"), Text("\n[DONE]"), Done()
    )
    with chat.page.expect_response(lambda r: routes[mode] in r.url) as response:
        chat.send(f"Quirky text {script.marker}", mode)
    chat.wait_done()
    expect(chat.answer).to_have_text("Line 1\ndata: 🙂\n[DONE]")
    assert response.value.status == 200
    assert (
        script.wait_for_request()
        .json["messages"][-1]["content"]
        .endswith(script.marker)
    )


@pytest.mark.parametrize("mode", MODES)
def test_stop_closes_the_upstream_within_a_second(
    chat: ChatPage, upstream: FakeUpstream, mode: str
) -> None:
    script = upstream.script(Forever("tick ", interval=0.05))
    chat.send(f"Go on forever {script.marker}", mode)
    expect(chat.answer).to_contain_text("tick tick", timeout=WAIT_MS)
    clicked = time.monotonic()
    chat.page.get_by_role("button", name="Stop").click()
    script.wait_disconnected()
    disconnected_at = script.wait_for_request().disconnected_at
    assert disconnected_at is not None and disconnected_at - clicked < 1.0
    expect(chat.status).to_have_text("Stopped.")
    expect(chat.page.get_by_role("button", name="Send")).to_be_enabled()


@pytest.mark.parametrize("mode", MODES)
def test_markup_from_the_model_is_shown_as_text(
    chat: ChatPage, upstream: FakeUpstream, mode: str
) -> None:
    script = upstream.script(Text(MARKUP), Text(" <script>alert(2)</script>"), Done())
    chat.send(f"Say something nasty {script.marker}", mode)
    chat.wait_done()
    expect(chat.answer).to_have_text(f"{MARKUP} <script>alert(2)</script>")
    assert chat.page.locator("#conversation img, #conversation script").count() == 0
    assert chat.dialogs == []


def test_nothing_runs_again_after_done_or_error(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    """An EventSource left open would reconnect and re-run (and re-bill) the answer."""
    scripts = []
    for mode in MODES:
        done = upstream.script(Text("Once."), Done())
        chat.send(f"Answer once {done.marker}", mode, new_chat=True)
        chat.wait_done()
        failed = upstream.script(
            Text("Half"), Sleep(0.1), ErrorEvent("The model broke down")
        )
        chat.send(f"Fail once {failed.marker}", mode, new_chat=True)
        expect(chat.status).to_contain_text("Error:", timeout=WAIT_MS)
        scripts += [done, failed]
    chat.forgive("ERR_INCOMPLETE_CHUNKED_ENCODING")  # raw text's cut-off body
    time.sleep(5)
    assert [len(s.requests) for s in scripts] == [1] * len(scripts)


@pytest.mark.parametrize("mode", MODES)
def test_upstream_error_mid_stream_is_shown(
    chat: ChatPage, upstream: FakeUpstream, mode: str
) -> None:
    script = upstream.script(
        Text("Half an answer"), Sleep(0.1), ErrorEvent("Overloaded")
    )
    chat.send(f"Break {script.marker}", mode)
    expect(chat.status).to_contain_text("Error:", timeout=WAIT_MS)
    expect(chat.status).to_have_class(re.compile("error"))
    chat.forgive("ERR_INCOMPLETE_CHUNKED_ENCODING")


def test_upstream_429_is_shown_with_retry_after(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    script = upstream.rate_limited(retry_after="7")
    chat.send(f"Too much {script.marker}")
    expect(chat.status).to_contain_text("Error: 429", timeout=WAIT_MS)
    expect(chat.status).to_contain_text("Retry after 7 s.")
    chat.forgive(r"status of 429")


def test_eventsource_error_before_the_stream_is_shown(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    # A 400 is answered at once, never retried: an HTTP error, before any byte. (A
    # 503's retries outlast the keep-alive interval: that one is an `event: error`.)
    script = upstream.script(status=400, body={"error": {"message": "too long"}})
    chat.send(f"Anyone there? {script.marker}", "eventsource")
    expect(chat.status).to_contain_text("could not be opened", timeout=WAIT_MS)
    chat.forgive(r"status of 400|MIME type")


def test_eventsource_shows_an_upstream_failure_that_outlasts_the_keepalive(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    """The SDK's retries of a 503 outlast one keep-alive interval: the response has
    started, and the server's own ``event: error`` says what failed."""
    script = upstream.script(status=503, body={"error": {"message": "down"}})
    chat.send(f"Anyone there? {script.marker}", "eventsource")
    expect(chat.status).to_contain_text("The upstream answered 503.", timeout=WAIT_MS)


def test_page_says_which_upstream_is_used(
    chat: ChatPage, browser: Browser, pool: ServerPool
) -> None:
    expect(chat.page.locator("#upstream")).to_have_attribute(
        "data-upstream", "openai-compatible"
    )
    demo = ChatPage(browser.new_page()).open(pool.get(FLASK_GUNICORN, "demo"))
    expect(demo.page.locator("#upstream")).to_have_attribute("data-upstream", "demo")
    demo.send("Hello")
    demo.wait_done()
    assert demo.console_errors == []
    demo.page.close()


def test_controls_are_labelled_and_fit_a_phone(browser: Browser, app: Server) -> None:
    page = browser.new_page(viewport={"width": 360, "height": 640}, is_mobile=True)
    chat = ChatPage(page).open(app)
    expect(page.get_by_role("textbox", name="Message")).to_be_visible()
    for button in ["Send", "Stop", "New chat"]:
        expect(page.get_by_role("button", name=button)).to_be_visible()
    for radio in ["fetch + SSE", "EventSource", "raw text"]:
        expect(
            page.get_by_role("radio", name=re.compile(re.escape(radio)))
        ).to_be_visible()
    # Every control a user can reach has a name a screen reader can say.
    unnamed = page.locator("input, textarea, button").evaluate_all(
        "els => els.filter(el => !el.labels?.length && !el.textContent.trim()).length"
    )
    assert unnamed == 0
    expect(page.locator("#conversation")).to_have_attribute("aria-live", "polite")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.close()
    assert chat.console_errors == []


@pytest.mark.parametrize("mode", SSE_MODES)
def test_thinking_streams_into_a_closed_box_above_the_answer(
    chat: ChatPage, upstream: FakeUpstream, mode: str
) -> None:
    script = upstream.script(
        reasoning("Let me think.\n"),
        reasoning(f"Markup stays text: {MARKUP}", field="reasoning"),
        Sleep(1.5),
        Text("The answer."),
        Finish("stop"),
        Usage(9, 30),
        Done(),
    )
    chat.send(f"Think first {script.marker}", mode)
    thinking = chat.message.locator("details.thinking")
    summary = thinking.locator("summary")
    # While the thinking streams: its title says so, and the box stays closed.
    expect(summary).to_have_text("Thinking…", timeout=WAIT_MS)
    expect(thinking).to_have_js_property("open", False)
    expect(thinking.locator(".thinking-text")).to_have_text(
        f"Let me think.\nMarkup stays text: {MARKUP}", use_inner_text=False
    )
    expect(chat.answer).to_have_count(0)
    chat.wait_done()
    expect(summary).to_have_text("Thinking")
    expect(thinking).to_have_js_property("open", False)
    expect(chat.answer).to_have_text("The answer.")
    # The thinking comes first, then the answer; a whole answer has no mark.
    assert chat.parts() == [
        "thinking",
        "text",
    ]
    expect(chat.message.locator(".ending")).to_be_hidden()
    expect(chat.message.locator(".meta")).to_contain_text(
        "usage: 9 prompt + 30 completion"
    )
    assert chat.page.locator("#conversation img").count() == 0
    summary.click()
    expect(thinking).to_have_attribute("open", "")
    expect(thinking.locator(".thinking-text")).to_be_visible()


def test_raw_text_shows_no_thinking_and_says_so(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    script = upstream.script(
        reasoning("Secret musings."), Text("Just the answer."), Finish("length"), Done()
    )
    chat.send(f"Think first {script.marker}", "text")
    chat.wait_done()
    expect(chat.answer).to_have_text("Just the answer.")
    expect(chat.message).not_to_contain_text("Secret musings.")
    expect(chat.message.locator(".thinking")).to_have_count(0)
    expect(chat.message.locator(".ending")).to_be_hidden()
    expect(
        chat.page.get_by_role("radio", name=re.compile("raw text"))
    ).to_have_accessible_name(
        re.compile("text only: no thinking, tool calls or cut-off marks")
    )


def test_the_next_question_sends_the_answer_without_its_thinking(
    chat: ChatPage, upstream: FakeUpstream
) -> None:
    # The second request repeats the first's marker: ``then`` answers it.
    follow_up = upstream.script(Text("About 2 million."), Done())
    first = upstream.script(reasoning("Hmm."), Text("Paris."), Done(), then=follow_up)
    chat.send(f"Capital of France? {first.marker}")
    chat.wait_done()
    chat.send("Population?")
    chat.wait_done()
    expect(chat.answer).to_have_text("About 2 million.")
    assert first.requests[1].json["messages"][1:] == [
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Population?"},
    ]


@pytest.mark.parametrize("mode", MODES)
def test_a_refusal_is_shown_as_one(
    chat: ChatPage, upstream: FakeUpstream, mode: str
) -> None:
    script = upstream.script(
        Refusal("I can't help "), Refusal(f"with {MARKUP}."), Finish("stop"), Done()
    )
    chat.send(f"Something bad {script.marker}", mode)
    chat.wait_done()
    if mode == "text":  # raw text carries a refusal as text
        expect(chat.answer).to_have_text(f"I can't help with {MARKUP}.")
        return
    refusal = chat.message.locator(".refusal")
    expect(refusal.locator(".refusal-label")).to_have_text("Refused")
    expect(refusal.locator(".refusal-text")).to_have_text(
        f"I can't help with {MARKUP}."
    )
    expect(chat.answer).to_have_count(0)
    assert chat.page.locator("#conversation img").count() == 0


@pytest.mark.parametrize("mode", SSE_MODES)
@pytest.mark.parametrize("reason", CUT_MARKS)
def test_an_answer_cut_short_is_marked_at_its_end(
    chat: ChatPage, upstream: FakeUpstream, mode: str, reason: str
) -> None:
    script = upstream.script(
        Text("The beginning of a long"), Finish(reason), Usage(5, 7), Done()
    )
    chat.send(f"Tell me everything {script.marker}", mode)
    chat.wait_done()
    expect(chat.answer).to_have_text("The beginning of a long")
    ending = chat.message.locator(".ending")
    expect(ending).to_be_visible()
    expect(ending).to_have_text(CUT_MARKS[reason])
    # The mark is the message's last word, before the stats line.
    assert chat.message.locator(":scope > *").evaluate_all(
        "els => els.map(el => el.className)"
    ) == ["role", "parts", "ending", "meta"]


# ---- Tools run by the server: the demo model calls the demo's tools. ------------

ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+09:00$")


@pytest.fixture(
    params=[FLASK_GUNICORN, DJANGO_GUNICORN], ids=lambda kind: str(kind.name)
)
def demo(
    request: pytest.FixtureRequest, browser: Browser, pool: ServerPool
) -> Iterator[ChatPage]:
    """A fresh page of each app with no key: the demo model and its example tools
    (``STREAM_TOOLS``' default); afterwards, no console error and no dialog."""
    context = browser.new_context()
    chat = ChatPage(context.new_page()).open(pool.get(request.param, "demo"))
    yield chat
    context.close()
    assert chat.console_errors == []
    assert chat.dialogs == []


@pytest.mark.parametrize("mode", SSE_MODES)
def test_a_tool_run_by_the_server_is_shown_with_its_output(
    demo: ChatPage, mode: str
) -> None:
    demo.send("What time is it in Tokyo?", mode)
    demo.wait_done()
    message = demo.message
    assert demo.parts() == ["thinking", "tool", "thinking", "text"]
    thinking = message.locator(".thinking-text")
    expect(thinking.first).to_contain_text(
        'I will call current_time with {"timezone":"Asia/Tokyo"}.'
    )
    tool = message.locator(".tool")
    expect(tool.locator(".tool-name")).to_have_text("current_time")
    expect(tool.locator(".tool-arguments")).to_have_text(
        '{\n  "timezone": "Asia/Tokyo"\n}', use_inner_text=False
    )
    expect(tool.locator("dt").last).to_have_text("Output")
    expect(tool.locator(".tool-output")).to_have_text(ISO_TIME)
    output = tool.locator(".tool-output").text_content()
    expect(demo.answer).to_have_text(
        f"Here is what my tools said.\nThe tool current_time says: {output}",
        use_inner_text=False,
    )
    expect(message.locator(".ending")).to_be_hidden()


def test_a_failing_tool_shows_its_error(demo: ChatPage) -> None:
    demo.send("Roll 2 dice with 200 sides")
    demo.wait_done()
    tool = demo.message.locator(".tool")
    expect(tool.locator(".tool-name")).to_have_text("roll_dice")
    expect(tool.locator(".tool-arguments")).to_have_text(
        '{\n  "count": 2,\n  "sides": 200\n}', use_inner_text=False
    )
    expect(tool.locator("dt").last).to_have_text("Error")
    expect(tool.locator(".tool-error")).to_contain_text(
        "sides must be a whole number from 2 to 100, got 200."
    )
    expect(demo.answer).to_contain_text("The tool roll_dice says:")


def test_raw_text_shows_only_the_text_of_a_tool_run(demo: ChatPage) -> None:
    demo.send("What time is it in Tokyo?", "text")
    demo.wait_done()
    expect(demo.answer).to_have_text(
        re.compile(r"^Here is what my tools said\.\nThe tool current_time says: \S+$"),
        use_inner_text=False,
    )
    assert demo.parts() == ["text"]


# ---- Tool calls, through a crafted body: markup, odd JSON, a call left unrun. ---

TOOL_BODY = "".join(
    [
        sse("I should roll a die.", "reasoning"),
        sse(
            {
                "id": "call_1",
                "name": "roll_dice",
                "arguments": '{"sides":6,"seed":12345678901234567890}',
            },
            "tool_call",
        ),
        sse(
            {"id": "call_2", "name": MARKUP, "arguments": f"{MARKUP} not JSON"},
            "tool_call",
        ),
        sse({"reason": "tool_calls"}, "finish"),
        sse({"id": "call_1", "output": f"4 {MARKUP}"}, "tool_result"),
        sse(
            {"id": "call_2", "error": "ValueError: <b>no such tool</b>"}, "tool_result"
        ),
        sse("It came up 4.", "reasoning"),
        sse("You rolled\na 4."),
        sse({"reason": "stop"}, "finish"),
        sse(
            {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32}, "usage"
        ),
        sse("[DONE]"),
    ]
)
# Tool calls that the server did not run (its STREAM_MAX_STEPS was reached).
UNRUN_BODY = "".join(
    [
        sse({"id": "call_9", "name": "lookup", "arguments": ""}, "tool_call"),
        sse({"reason": "tool_calls"}, "finish"),
        sse("[DONE]"),
    ]
)
SSE_ROUTES = {
    "fetch": re.compile(r"/completions/chat$"),
    "eventsource": re.compile(r"/completionChat\?"),
}


@pytest.fixture
def routed(browser: Browser, pool: ServerPool) -> Iterator[ChatPage]:
    """A fresh page of the Flask app (both apps serve the same page), for bodies
    crafted by the test; afterwards, no console error and no dialog."""
    context = browser.new_context()
    chat = ChatPage(context.new_page()).open(pool.get(FLASK_GUNICORN))
    yield chat
    context.close()
    assert chat.console_errors == []
    assert chat.dialogs == []


def answer_with(chat: ChatPage, mode: str, body: str) -> None:
    """Make the route of ``mode`` answer ``body`` as an event stream."""
    chat.page.route(
        SSE_ROUTES[mode],
        lambda route: route.fulfill(
            status=200,
            headers={"Cache-Control": "no-cache"},
            content_type="text/event-stream; charset=utf-8",
            body=body,
        ),
    )


@pytest.mark.parametrize("mode", SSE_MODES)
def test_tool_calls_and_results_are_shown_as_text(routed: ChatPage, mode: str) -> None:
    answer_with(routed, mode, TOOL_BODY)
    routed.send("Roll a die", mode)
    routed.wait_done()
    message = routed.message
    # Everything in the order it came: thinking, the step's calls, thinking, text.
    assert routed.parts() == ["thinking", "tool", "tool", "thinking", "text"]
    first, second = message.locator(".tool").all()
    expect(first.locator(".tool-head")).to_have_text("Tool call roll_dice")
    expect(first.locator(".tool-arguments")).to_have_text(
        '{\n  "sides": 6,\n  "seed": 12345678901234567890\n}', use_inner_text=False
    )
    expect(first.locator("dt").last).to_have_text("Output")
    expect(first.locator(".tool-output")).to_have_text(f"4 {MARKUP}")
    expect(second.locator(".tool-name")).to_have_text(MARKUP)
    expect(second.locator(".tool-arguments")).to_have_text(f"{MARKUP} not JSON")
    expect(second.locator("dt").last).to_have_text("Error")
    expect(second.locator(".tool-error")).to_have_text(
        "ValueError: <b>no such tool</b>"
    )
    thinking = message.locator("details.thinking")
    expect(thinking.locator(".thinking-text")).to_have_text(
        ["I should roll a die.", "It came up 4."]
    )
    expect(thinking.locator("summary")).to_have_text(["Thinking", "Thinking"])
    expect(routed.answer).to_have_text("You rolled\na 4.", use_inner_text=False)
    expect(message.locator(".ending")).to_be_hidden()
    expect(message.locator(".meta")).to_contain_text("usage: 20 prompt + 12 completion")
    assert routed.page.locator("#conversation img, #conversation b").count() == 0


@pytest.mark.parametrize("mode", SSE_MODES)
def test_a_tool_call_left_unrun_says_it_has_no_result(
    routed: ChatPage, mode: str
) -> None:
    answer_with(routed, mode, UNRUN_BODY)
    routed.send("Look it up", mode)
    routed.wait_done()
    tool = routed.message.locator(".tool")
    expect(tool.locator(".tool-name")).to_have_text("lookup")
    expect(tool.locator(".tool-result")).to_have_text("No result.")
    expect(tool.locator(".pending")).to_have_count(0)
