"""``python -m shared.demo_server``: the demo model over real HTTP, as a process.

Each configuration (pace, silence) runs once for this module. The openai SDK talks
to it as to any OpenAI-compatible server; raw sockets check the wire (chunks, timing)
and hang up at chosen moments; the server's log says what it saw.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx2
import openai
import pytest

from shared.demo import DemoTransport, demo_answer
from tests.servers import ROOT, DemoUpstream, free_port

pytestmark = pytest.mark.servers

PROMPT = "Tell me   about streaming\nresponses, please ✓"
API_KEY = "sk-demo-any-value-0123456789abcdef"  # accepted, and never logged
PACED_DELAY = 0.05
SILENCE = 2.0
SLOW_DELAY = 2.0  # between two events: long enough to see a departure noticed
ROUTES = {"chat/completions": "messages", "completions": "prompt", "responses": "input"}
CLIENT_LEFT = r"answer ended: client left after (\d+) events"


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-server")


@pytest.fixture(scope="module")
def fast(logs: Path) -> Iterator[DemoUpstream]:
    """No pause between events: for what is said, not when."""
    with DemoUpstream(logs / "fast.log", ("--token-delay", "0")) as server:
        yield server


@pytest.fixture(scope="module")
def paced(logs: Path) -> Iterator[DemoUpstream]:
    args = ("--token-delay", str(PACED_DELAY))
    with DemoUpstream(logs / "paced.log", args) as server:
        yield server


@pytest.fixture(scope="module")
def slow(logs: Path) -> Iterator[DemoUpstream]:
    """A model that thinks ``SILENCE`` seconds, then types one token at a time."""
    args = ("--silence", str(SILENCE), "--token-delay", str(SLOW_DELAY))
    with DemoUpstream(logs / "slow.log", args) as server:
        yield server


@pytest.fixture
def client(fast: DemoUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=fast.base_url, api_key=API_KEY, max_retries=0, timeout=10.0
    ) as client:
        yield client


def request_body(route: str, stream: bool = True) -> dict[str, Any]:
    field = ROUTES[route]
    prompt: Any = (
        [{"role": "user", "content": PROMPT}] if field == "messages" else PROMPT
    )
    body = {"model": "demo", field: prompt, "stream": stream}
    if field == "messages":
        body["stream_options"] = {"include_usage": True}
    return body


# The three APIs as an application reads them: the text of a streamed answer.
def chat_text(client: openai.OpenAI) -> str:
    with client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": PROMPT}], stream=True
    ) as stream:
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def completion_text(client: openai.OpenAI) -> str:
    with client.completions.create(model="demo", prompt=PROMPT, stream=True) as stream:
        return "".join(c.choices[0].text for c in stream)


def responses_text(client: openai.OpenAI) -> str:
    with client.responses.create(model="demo", input=PROMPT, stream=True) as stream:
        return "".join(
            e.delta for e in stream if e.type == "response.output_text.delta"
        )


@pytest.mark.parametrize("read", [chat_text, completion_text, responses_text])
def test_openai_client_streams_the_demo_answer(
    fast: DemoUpstream, client: openai.OpenAI, read: Callable[[openai.OpenAI], str]
) -> None:
    since = fast.log_size()
    assert read(client) == demo_answer(PROMPT)
    fast.wait_for_log(r"answer ended: finished after \d+ events", since)
    assert API_KEY not in fast.log()


def test_openai_client_gets_a_whole_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": PROMPT}]
    )
    assert completion.choices[0].message.content == demo_answer(PROMPT)
    assert completion.choices[0].finish_reason == "stop"


def test_include_usage_ends_the_stream_with_the_usage(client: openai.OpenAI) -> None:
    with client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    tokens = [c for c in chunks[1:-2] if c.choices]  # no role chunk, no finish
    thinking = [c for c in tokens if c.choices[0].delta.model_extra]
    assert usage.completion_tokens == len(tokens)  # the thinking, then the text
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == len(thinking) > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


@dataclass
class RawStream:
    """A response read off a socket, chunk by chunk, as the bytes arrive."""

    status: int
    headers: dict[str, str]
    reader: BinaryIO

    def chunks(self) -> Iterator[tuple[float, bytes]]:
        """Each chunk's data and when it was whole, up to the last (empty) chunk."""
        while size := int(self.reader.readline(), 16):
            data = self.reader.read(size)
            assert self.reader.read(2) == b"\r\n"
            yield time.monotonic(), data
        assert self.reader.read(2) == b"\r\n"


@contextmanager
def raw_post(server: DemoUpstream, path: str, body: bytes) -> Iterator[RawStream]:
    """POST on a socket of its own; leaving the block closes it (the client
    leaves, if the answer is not over)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        with sock.makefile("rb") as reader:
            status = int(reader.readline().split()[1])
            headers = {}
            while line := reader.readline().rstrip(b"\r\n"):
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            yield RawStream(status, headers, reader)


def stream_chat(server: DemoUpstream) -> AbstractContextManager[RawStream]:
    body = json.dumps(request_body("chat/completions")).encode()
    return raw_post(server, "/v1/chat/completions", body)


def without_ids(event: bytes) -> bytes:
    """Ids and timestamps are fresh for each answer: compare what is left."""
    event = re.sub(rb"demo[0-9a-f]{24}", b"demo-ID", event)
    return re.sub(rb'"created(_at)?":\d+', b'"created":0', event)


def in_process_events(route: str) -> list[bytes]:
    """What ``DemoTransport`` streams for the same request, without a socket."""
    request = httpx2.Request(
        "POST", f"http://demo.invalid/v1/{route}", json=request_body(route)
    )
    response = DemoTransport(token_delay=0).handle_request(request)
    return [without_ids(event) for event in response.iter_raw()]  # then closed


@pytest.mark.parametrize("route", ROUTES)
def test_each_sse_event_is_one_chunk_as_in_process(
    fast: DemoUpstream, route: str
) -> None:
    since = fast.log_size()
    body = json.dumps(request_body(route)).encode()
    with raw_post(fast, f"/v1/{route}", body) as answer:
        events = [data for _, data in answer.chunks()]
    assert answer.status == 200
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in answer.headers
    assert all(e.endswith(b"\n\n") and e.count(b"\n\n") == 1 for e in events)
    assert [without_ids(e) for e in events] == in_process_events(route)
    if route != "responses":  # the Responses API ends on response.completed
        assert events[-1] == b"data: [DONE]\n\n"
    fast.wait_for_log(f'"POST /v1/{route}" 200', since)
    fast.wait_for_log(f"answer ended: finished after {len(events)} events", since)


def test_tokens_arrive_as_they_are_produced(paced: DemoUpstream) -> None:
    with stream_chat(paced) as answer:
        times = [at for at, _ in answer.chunks()]
    expected = (len(times) - 1) * PACED_DELAY
    assert times[-1] - times[0] >= 0.5 * expected


def test_silence_comes_after_the_headers_before_the_first_event(
    slow: DemoUpstream,
) -> None:
    since, started = slow.log_size(), time.monotonic()
    with stream_chat(slow) as answer:
        headers_at = time.monotonic()
        first_at, _ = next(answer.chunks())
    assert first_at - started >= SILENCE - 0.1
    assert headers_at - started < SILENCE / 2
    slow.wait_for_log(CLIENT_LEFT, since, timeout=SLOW_DELAY + 3)  # not the next's


def test_a_client_leaving_during_the_silence_ends_the_answer_at_once(
    slow: DemoUpstream,
) -> None:
    since = slow.log_size()
    with stream_chat(slow) as answer:
        assert answer.status == 200
    left_at = time.monotonic()
    ended = slow.wait_for_log(CLIENT_LEFT, since, timeout=SILENCE + 3)
    assert time.monotonic() - left_at < 1.0
    assert ended[1] == "0"


def test_a_client_leaving_mid_answer_ends_the_answer_at_once(
    slow: DemoUpstream,
) -> None:
    since = slow.log_size()
    with stream_chat(slow) as answer:
        next(answer.chunks())
    left_at = time.monotonic()
    ended = slow.wait_for_log(CLIENT_LEFT, since, timeout=SLOW_DELAY + 3)
    assert time.monotonic() - left_at < 1.0
    assert ended[1] == "1"


def json_request(
    server: DemoUpstream, method: str, path: str, body: bytes = b""
) -> tuple[int, Any]:
    """One request whose answer is JSON, framed by its ``Content-Length``."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body)
        with conn.getresponse() as response:
            assert response.headers["Content-Type"] == "application/json"
            answer = response.read()
            assert response.headers["Content-Length"] == str(len(answer))
            return response.status, json.loads(answer)
    finally:
        conn.close()


def test_a_whole_answer_is_json_with_a_content_length(fast: DemoUpstream) -> None:
    body = json.dumps(request_body("completions", stream=False)).encode()
    status, answer = json_request(fast, "POST", "/v1/completions", body)
    assert status == 200
    assert answer["choices"][0]["text"] == demo_answer(PROMPT)


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/chat/completions"), ("GET", "/")]
)
def test_paths_outside_v1_get_openais_404(
    fast: DemoUpstream, method: str, path: str
) -> None:
    body = json.dumps(request_body("chat/completions")).encode()
    status, answer = json_request(fast, method, path, body)
    assert status == 404
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"] == f"Invalid URL ({method} {path})"


def test_a_base_url_without_v1_is_a_not_found_error_in_the_sdk(
    fast: DemoUpstream,
) -> None:
    base_url = fast.base_url.removesuffix("/v1")
    with (
        openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0) as client,
        pytest.raises(openai.NotFoundError, match="Invalid URL"),
    ):
        client.chat.completions.create(model="demo", messages=[])


def test_bad_json_is_a_400_and_the_log_leaves_the_query_out(
    fast: DemoUpstream,
) -> None:
    since = fast.log_size()
    path = "/v1/chat/completions?api-key=secret-in-a-query"
    status, answer = json_request(fast, "POST", path, b"{not json")
    assert status == 400
    assert answer["error"]["message"].startswith("We could not parse the JSON body")
    fast.wait_for_log('"POST /v1/chat/completions" 400', since)
    assert "secret-in-a-query" not in fast.log()


def raw_exchange(server: DemoUpstream, request: bytes) -> tuple[int, Any]:
    """Send bytes as they are, then read the JSON answer up to the connection's end."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        with sock.makefile("rb") as reader:
            status = int(reader.readline().split()[1])
            head, _, body = reader.read().partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/json\r\n" in head
    return status, json.loads(body)


@pytest.mark.parametrize(
    ("request_line", "header", "status"),
    [
        (b"GET /\x1b[2J HTTP/1.1", b"", 404),  # a control character
        (b"OPTIONS * HTTP/1.1", b"", 404),
        (b"GET http://127.0.0.1/v1/models HTTP/1.1", b"", 404),  # absolute form
        (b"POST /v1/completions HTTP/1.1", b"X-Name: \xe9\xff\r\n", 200),
    ],
    ids=["control-character", "asterisk", "absolute-form", "latin-1-header"],
)
def test_odd_requests_get_an_answer_and_log_no_traceback(
    fast: DemoUpstream, request_line: bytes, header: bytes, status: int
) -> None:
    since, body = fast.log_size(), b'{"prompt": "hi"}'
    head = b"%s\r\nHost: x\r\nConnection: close\r\n%s" % (request_line, header)
    request = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
    answer = raw_exchange(fast, request)
    assert answer[0] == status
    assert ("error" in answer[1]) == (status == 404)
    fast.wait_for_log(f'" {status}\n', since)
    assert "Traceback" not in fast.log()
    assert "\x1b" not in fast.log()  # escaped, as the stdlib's log does


def test_one_keep_alive_connection_serves_one_request_after_another(
    fast: DemoUpstream, client: openai.OpenAI
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fast.port, timeout=10)
    sockets = []
    try:
        for stream in (True, False, True):
            body = json.dumps(request_body("chat/completions", stream))
            conn.request("POST", "/v1/chat/completions", body=body)
            with conn.getresponse() as response:
                assert response.status == 200
                assert demo_answer(PROMPT).split()[-1].encode() in response.read()
            sockets.append(conn.sock)  # None if the server had closed it
    finally:
        conn.close()
    assert sockets[0] is not None and sockets == [sockets[0]] * 3
    assert chat_text(client) == chat_text(client) == demo_answer(PROMPT)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_exits_0_at_once_even_mid_answer(
    tmp_path: Path, stop: signal.Signals
) -> None:
    args = ("--token-delay", "0.5")
    with (
        DemoUpstream(tmp_path / "stop.log", args) as server,
        stream_chat(server) as answer,
    ):
        next(answer.chunks())  # an answer is under way
        assert server.process is not None
        server.process.send_signal(stop)
        assert server.process.wait(5) == 0
    assert f"Demo upstream stopped ({stop.name})." in server.log()
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--host", "192.0.2.1"), "--host '192.0.2.1' is not a loopback address"),
        (("--token-delay", "-1"), "expected seconds >= 0, got '-1'"),
        (("--silence", "nan"), "expected seconds >= 0, got 'nan'"),
    ],
    ids=["non-loopback-host", "negative-delay", "nan-silence"],
)
def test_a_bad_command_line_stops_with_a_message(
    args: tuple[str, ...], message: str
) -> None:
    """A host no interface has (TEST-NET-1): never served, even if the check broke."""
    command = [sys.executable, "-m", "shared.demo_server", "--port", str(free_port())]
    done = subprocess.run(
        [*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=15
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_a_port_in_use_stops_with_a_message(fast: DemoUpstream) -> None:
    command = [sys.executable, "-m", "shared.demo_server", "--port", str(fast.port)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=15)
    assert done.returncode == 1
    assert f"Cannot listen on '127.0.0.1' port {fast.port}" in done.stderr


def test_make_demo_upstream_runs_the_module_on_demo_port() -> None:
    done = subprocess.run(
        ["make", "-n", "demo-upstream", "DEMO_PORT=8123"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert done.returncode == 0, done.stderr
    assert "/python -m shared.demo_server --port 8123\n" in done.stdout
