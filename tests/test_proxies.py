"""The standard proxy variables, honoured exactly as the openai SDK's client does.

``tests.forward_proxy`` is the proxy: it sends every request to a fake upstream on
127.0.0.1, whatever host it names. The proxied base URLs name a host that never
resolves, so an answer proves that the request went through the proxy.
"""

from __future__ import annotations

import httpx2
import openai
import pytest

from shared.transport import LeanTransport
from shared.upstream import LeanHttpClient
from tests.client import parse_sse, post_json, texts
from tests.conftest import ServerPool
from tests.fake_upstream import PROXY_ONLY_HOST, Done, FakeUpstream, Text
from tests.forward_proxy import ForwardProxy, ProxiedRequest
from tests.servers import DJANGO_GUNICORN, FLASK_GUNICORN, ServerKind

APPS = [
    pytest.param(FLASK_GUNICORN, id="flask"),
    pytest.param(DJANGO_GUNICORN, id="django"),
]
ANSWER = b"data: through \n\ndata: the proxy\n\ndata: [DONE]\n\n"


def stream_through(
    pool: ServerPool, kind: ServerKind, config: str, fake: FakeUpstream
) -> bytes:
    """Ask a server in ``config`` for a two-delta answer; the marker is returned."""
    script = fake.script(Text("through "), Text("the proxy"), Done())
    server = pool.get(kind, config)
    status, _, body = post_json(server, "/completions/chat", {"prompt": script.marker})
    assert (status, body) == (200, ANSWER), server.log()[-2000:]
    assert script.wait_for_request().headers["host"] == PROXY_ONLY_HOST
    return script.marker.encode()


@pytest.mark.parametrize("kind", APPS)
def test_http_proxy_carries_the_stream(
    pool: ServerPool, upstream: FakeUpstream, proxy: ForwardProxy, kind: ServerKind
) -> None:
    marker = stream_through(pool, kind, "proxied", upstream)
    seen = [r.target for r in proxy.requests if marker in r.body]
    assert seen == [f"http://{PROXY_ONLY_HOST}/v1/chat/completions"]


@pytest.mark.parametrize("kind", APPS)
def test_https_proxy_carries_the_stream_through_a_connect_tunnel(
    pool: ServerPool, tls_upstream: FakeUpstream, proxy: ForwardProxy, kind: ServerKind
) -> None:
    stream_through(pool, kind, "tls-proxied", tls_upstream)
    assert ProxiedRequest("CONNECT", f"{PROXY_ONLY_HOST}:443") in proxy.requests


@pytest.mark.parametrize("kind", APPS)
def test_no_proxy_sends_a_listed_host_around_the_proxy(
    pool: ServerPool, upstream: FakeUpstream, proxy: ForwardProxy, kind: ServerKind
) -> None:
    server = pool.get(kind, "no-proxy")  # HTTP_PROXY set, NO_PROXY=127.0.0.1
    script = upstream.script(Text("direct"), Done())
    status, _, body = post_json(server, "/completions/chat", {"prompt": script.marker})
    assert (status, texts(parse_sse(body))) == (200, ["direct"])
    assert script.wait_for_request().headers["host"].startswith("127.0.0.1:")
    assert not [r for r in proxy.requests if script.marker.encode() in r.body]


# The environment, the URL asked for (PLAIN and TLS: a fake upstream's address),
# and whether the proxy must carry it.
ROUTES = [
    pytest.param(
        {"HTTP_PROXY": "PROXY"}, f"http://{PROXY_ONLY_HOST}/v1", True, id="http"
    ),
    pytest.param(
        {"http_proxy": "PROXY"},
        f"http://{PROXY_ONLY_HOST}/v1",
        True,
        id="http-lower-case",
    ),
    pytest.param(
        {"HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "PROXY"},
        "PLAIN",
        True,
        id="lower-case-wins",
    ),
    pytest.param(
        {"ALL_PROXY": "PROXY"}, f"http://{PROXY_ONLY_HOST}/v1", True, id="all"
    ),
    pytest.param(
        {"HTTPS_PROXY": "PROXY"},
        f"https://{PROXY_ONLY_HOST}/v1",
        True,
        id="https-connect",
    ),
    pytest.param({"HTTPS_PROXY": "PROXY"}, "PLAIN", False, id="https-only-for-https"),
    pytest.param(
        {"HTTP_PROXY": "PROXY", "NO_PROXY": "127.0.0.1"},
        "PLAIN",
        False,
        id="no-proxy-ip",
    ),
    pytest.param(
        {"HTTP_PROXY": "PROXY", "no_proxy": "example.com, 127.0.0.1"},
        "PLAIN",
        False,
        id="no-proxy-list",
    ),
    pytest.param(
        {"HTTP_PROXY": "PROXY", "NO_PROXY": "localhost"},
        "PLAIN",
        True,
        id="no-proxy-other-host",
    ),
    pytest.param(
        {"HTTP_PROXY": "PROXY", "NO_PROXY": "*"}, "PLAIN", False, id="no-proxy-star"
    ),
    pytest.param(
        {"ALL_PROXY": "PROXY", "NO_PROXY": "127.0.0.0/8"},
        "TLS",
        False,
        id="no-proxy-cidr",
    ),
    pytest.param(
        {"HTTPS_PROXY": "PROXY", "NO_PROXY": "localhost"},
        "TLS",
        True,
        id="https-no-proxy-other-host",
    ),
]


@pytest.mark.parametrize(("env", "url", "proxied"), ROUTES)
def test_requests_take_the_route_the_sdks_own_client_takes(
    monkeypatch: pytest.MonkeyPatch,
    upstream: FakeUpstream,
    tls_upstream: FakeUpstream,
    proxy: ForwardProxy,
    env: dict[str, str],
    url: str,
    proxied: bool,
) -> None:
    """Same variables, same URL: through the proxy, or around it, as the SDK goes;
    around it, on the lean transport."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("PROXY", proxy.url))
    assert tls_upstream.ca_file is not None
    monkeypatch.setenv("SSL_CERT_FILE", tls_upstream.ca_file)
    url = {"PLAIN": upstream.base_url, "TLS": tls_upstream.base_url}.get(url, url)
    lean: list[httpx2.Request] = []
    handle_request = LeanTransport.handle_request

    def recorded(transport: LeanTransport, request: httpx2.Request) -> httpx2.Response:
        lean.append(request)
        return handle_request(transport, request)

    monkeypatch.setattr(LeanTransport, "handle_request", recorded)
    routes = []
    for client in (openai.DefaultHttpxClient(), LeanHttpClient()):
        with client:
            before, lean_before = len(proxy.requests), len(lean)
            status = client.get(f"{url}/models").status_code
            routes.append(
                (status, len(proxy.requests) > before, len(lean) > lean_before)
            )
    assert routes == [(404, proxied, False), (404, proxied, not proxied)]
