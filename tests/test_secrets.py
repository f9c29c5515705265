"""The key never leaves the server: not in a response, a page, or a log line."""

from __future__ import annotations

from tests.client import get_chat, post_json
from tests.conftest import FAKE_API_KEY, ServerPool
from tests.fake_upstream import Abort, Done, FakeUpstream, Text
from tests.servers import ALL_KINDS


def test_the_key_appears_in_no_response_and_no_log_line(
    pool: ServerPool, upstream: FakeUpstream
) -> None:
    # The upstream quotes the key back, as OpenAI's 401 message does in part.
    echo = {
        "error": {
            "message": f"Incorrect API key provided: {FAKE_API_KEY}",
            "type": "auth",
        }
    }
    scripts = [
        upstream.script(Text("fine"), Done()),
        upstream.script(Text("partial"), Abort()),
        upstream.script(status=401, body=echo),
        upstream.script(status=400, body=echo),
        upstream.script(status=429, headers={"retry-after-ms": "5"}, body=echo),
        upstream.script(status=500, headers={"retry-after-ms": "5"}, body=echo),
    ]
    servers = [pool.get(kind) for kind in ALL_KINDS]
    refused = [pool.get(kind, "refused") for kind in ALL_KINDS]
    answers: list[bytes] = []
    for server in servers + refused:
        for path in ("/", "/healthz", "/nope"):
            status, headers, body = server.request("GET", path)
            answers.append(str(headers).encode() + body)
        # An unreachable upstream fails alike whatever the script: one is enough.
        for script in scripts if server in servers else scripts[:1]:
            for response in (
                get_chat(server, f"k {script.marker}"),
                post_json(
                    server, "/completions/chat", {"prompt": f"k {script.marker}"}
                ),
            ):
                answers.append(str(response[1]).encode() + response[2])
            try:
                answers.append(
                    post_json(server, "/api/stream", {"message": f"k {script.marker}"})[
                        2
                    ]
                )
            except (
                Exception
            ) as exc:  # a cut-off raw body: its text must not leak either
                answers.append(repr(exc).encode())
    assert upstream.requests and all(
        r.headers.get("authorization") == f"Bearer {FAKE_API_KEY}"
        for r in upstream.requests
    ), "the servers should use the key with the upstream"
    secret_parts = [FAKE_API_KEY.encode(), FAKE_API_KEY[-12:].encode()]
    for answer in answers:
        assert not any(part in answer for part in secret_parts), answer[:300]
    for server in servers + refused:
        log = server.log()
        assert log, server.name
        assert FAKE_API_KEY[-12:] not in log, server.name
