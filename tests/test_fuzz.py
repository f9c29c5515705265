"""Bad input on every route gets a 2xx or a 4xx, never a 5xx or a traceback.

Hypothesis writes each request byte for byte to a real server on 127.0.0.1, one
connection per example, so that what no client library would send goes out as drawn:
any method; query strings with percent-encoded junk, invalid UTF-8, repeated keys and
over a thousand fields; JSON values, request-shaped JSON and near-JSON bytes as
bodies; content types with parameters, odd case and junk; ``Host``, ``Origin``,
``Sec-Fetch-Site``, ``Authorization`` and other headers; bodies framed by an exact,
short, long or junk ``Content-Length``, by chunks, or by both. Most parts of most
requests are what a good client sends, so that enough of them get past the HTTP
server to the app, and on to the fake upstream.

Who answered matters. Both apps add ``shared.guard.SECURITY_HEADERS`` to every
response they make, errors included; gunicorn and the development servers answer a
request they refuse to parse (a bad request line, header or ``Content-Length``) with
a page of their own, without those headers. An answer from the app keeps the
contract: a 4xx is ``application/json`` ``{"error": {"message": str, "type": str}}``.
An answer from the HTTP server layer is not the contract's to shape: it must be a
4xx too and show no traceback, but its body is the server's own page.

Each example ends in bounded time: a body shorter than its ``Content-Length`` (or
framed so that the server can't tell) is followed by a half-close, so that the
server reads EOF instead of waiting; a request that streams gets the fake upstream's
default answer (``DEFAULT_STEPS``) at once; every read has a timeout.
"""

from __future__ import annotations

import builtins
import http.client
import json
import re
import socket
import string
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import quote, quote_from_bytes, quote_plus, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import ACCESS_TOKEN, CORS_ORIGIN, MAX_PROMPT_CHARS, ServerPool
from tests.servers import (
    ALL_KINDS,
    DJANGO_GUNICORN,
    FLASK_GUNICORN,
    Server,
    ServerKind,
)

pytestmark = pytest.mark.servers

T = TypeVar("T")
Route = tuple[str, str]  # the method it answers, its path ("{name}": an asset name)
Headers = list[tuple[bytes, bytes]]
ROUTES: list[Route] = [
    ("GET", "/"),
    ("GET", "/assets/{name}"),
    ("GET", "/healthz"),
    ("GET", "/completion"),
    ("GET", "/completionChat"),
    ("POST", "/completions/chat"),
    ("POST", "/api/stream"),
]
# Each server against the plain fake upstream; gunicorn also with the access rules
# on (a bearer token, a body limit), where a good request must bring the token.
TARGETS = [
    *[pytest.param(kind, "plain", id=kind.name) for kind in ALL_KINDS],
    pytest.param(FLASK_GUNICORN, "guarded", id="flask-gunicorn-guarded"),
    pytest.param(DJANGO_GUNICORN, "guarded", id="django-gunicorn-guarded"),
]
# Examples per route and server: the whole file runs in about half a minute here.
EXAMPLES = {"plain": 50, "guarded": 25}
DEV_EXAMPLES = 30
FUZZ = settings(
    deadline=None,
    database=None,  # each test has its own @seed: the same requests on every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
READ_TIMEOUT_SECONDS = 10.0
# gunicorn refuses request lines over 8190 bytes with a 414: stay well under.
MAX_TARGET_BYTES = 3900
SECURITY_HEADER = ("X-Frame-Options", "DENY")  # one of shared.guard.SECURITY_HEADERS
# What no response body may show: a traceback, or the name of a Python exception.
EXCEPTION_NAMES = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
} | {"JSONDecodeError", "StreamError", "UpstreamFailed", "ClientDisconnected"}
LEAK = re.compile(
    rb'Traceback \(most recent call last\)|File "[^"]+", line \d+|\b(?:%s)\b'
    % "|".join(sorted(EXCEPTION_NAMES)).encode()
)
# Log lines that mean a request failed inside the server: a traceback, gunicorn's
# "Error handling request", an access-log line with a 5xx status (all three
# servers log '"METHOD /path HTTP/1.1" STATUS').
LOG_FAILURE = re.compile(r'Traceback|Error handling request|" 5\d\d ')


def route_streams(route: Route) -> bool:
    return route[1] not in {"/", "/assets/{name}", "/healthz"}


# --- Requests ----------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzRequest:
    """One request as bytes on the wire, and what the checks need to know of it."""

    method: str
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    framing: str  # "none", "length", "chunked", "short", "long", "junk", "both"
    route: Route = field(repr=False)

    @property
    def half_close(self) -> bool:
        """Whether the server might wait for body bytes that never come."""
        return self.framing in {"long", "junk", "both"}

    def header(self, name: str) -> bytes | None:
        found = [v for k, v in self.headers if k.lower() == name.lower().encode()]
        return found[0] if found else None

    def wire(self) -> bytes:
        start = b"%s %s %s\r\n" % (self.method.encode(), self.target, self.version)
        lines = b"".join(b"%s: %s\r\n" % (k, v) for k, v in self.headers)
        return start + lines + b"\r\n" + self.body


def mostly(
    usual: st.SearchStrategy[T], rare: st.SearchStrategy[T], one_in: int
) -> st.SearchStrategy[T]:
    """``rare`` about once in ``one_in`` draws, else ``usual``."""
    # Hypothesis starts from, and shrinks towards, the smallest draw: the usual one.
    return st.integers(1, one_in).flatmap(lambda n: rare if n == one_in else usual)


TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# What a client might put raw in a query string (gunicorn refuses some, as it may).
RAW_QUERY_CHARS = "".join(c for c in string.printable if c not in " #\t\n\r\x0b\x0c")
RAW_QUERY_CHARS += "\x80\xff"
BAD_ESCAPES = [
    "%", "%%", "%G1", "%zz", "%F", "%FF%FE", "%C3", "%C3%28", "%ED%A0%80",
    "%F4%90%80%80", "%00", "%0D%0A", "%25", "+", "%2B", "%26", "%3D", "%E2%80%A8",
]  # fmt: skip
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "Application/Json ; Charset=UTF-8",
    "application/json;charset=latin-1",
    "application/json; charset=",
    'application/json; charset="utf-8"; x=y',
    " application/json",
    "application/json,text/plain",
    "application/jsonx",
    "application/ld+json",
    "text/json",
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "*/*",
    ";",
    "",
]
JSON_TYPES = CONTENT_TYPES[:5]
CONTENT_LENGTH_JUNK = [
    b"abc", b"-1", b"+5", b"1e3", b"0x10", b" 5 ", b"5, 5", b"5 5", b"\xb2", b"\xb9",
    b"99999999999999999999", b"",
]  # fmt: skip
# Headers that frame the request: drawn on purpose below, never as "extra" ones.
FRAMING_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}
FRAMING_HEADERS |= {"upgrade", "expect", "te", "trailer", "keep-alive"}

PROMPTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\t\n", "hi", "[DONE]", "\n\ndata: x", "\x00"]),
    st.integers(MAX_PROMPT_CHARS - 2, MAX_PROMPT_CHARS + 2).map(lambda n: "x" * n),
)
GOOD_PROMPTS = st.text(min_size=1, max_size=40).filter(str.strip)
# JSON can carry half a surrogate pair ("\ud83d"), and Python's json keeps it.
JSON_PROMPTS = mostly(
    GOOD_PROMPTS,
    st.builds(
        lambda text, at, half: text[:at] + half + text[at:],
        GOOD_PROMPTS,
        st.integers(0, 40),
        st.characters(categories=["Cs"]),
    ),
    4,
)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=20)  # with Cs
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=10,
)
ROLES = st.sampled_from(["user", "system", "developer", "assistant", "wizard", ""])
REQUEST_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "prompt": PROMPTS | ANY_TEXT | JSON_VALUES,
        "message": PROMPTS | ANY_TEXT | JSON_VALUES,
        "messages": JSON_VALUES
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": ROLES | JSON_VALUES,
                    "content": PROMPTS | ANY_TEXT | JSON_VALUES,
                    "name": JSON_VALUES,
                },
            ),
            max_size=3,
        ),
        "model": JSON_VALUES,
        "stream": JSON_VALUES,
    },
)


def encode_json(value: object, ascii_only: bool, indent: int | None) -> bytes:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    return text.encode("utf-8", "surrogatepass")  # json.loads takes these back


JSON_BYTES = st.builds(
    encode_json, REQUEST_SHAPED | JSON_VALUES, st.booleans(), st.none() | st.just(2)
)


def good_body(key: str) -> st.SearchStrategy[bytes]:
    """A body that the route answers with a stream: ``{key: ...}`` or messages."""
    message = st.fixed_dictionaries({"role": ROLES.filter(bool), "content": PROMPTS})
    first = st.fixed_dictionaries({"role": st.just("user"), "content": JSON_PROMPTS})
    payload = st.builds(lambda prompt: {key: prompt}, JSON_PROMPTS) | st.builds(
        lambda one, more: {"messages": [one, *more]},
        first,
        st.lists(message, max_size=2),
    )
    return st.builds(encode_json, payload, st.booleans(), st.none())


@st.composite
def near_json(draw: st.DrawFn) -> bytes:
    """JSON bytes broken in one way: cut, patched, re-encoded, padded or huge."""
    data = draw(JSON_BYTES)
    how = draw(
        st.sampled_from(
            ["cut", "insert", "delete", "bom", "utf16", "pad", "trail", "huge"]
        )
    )
    at = draw(st.integers(0, len(data)))
    match how:
        case "cut":
            return data[:at]
        case "insert":
            return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
        case "delete":
            return data[:at] + data[at + 1 :]
        case "bom":
            return b"\xef\xbb\xbf" + data
        case "utf16":
            codec = draw(st.sampled_from(["utf-16", "utf-16-be", "utf-32"]))
            return data.decode("utf-8", "surrogatepass").encode(codec, "surrogatepass")
        case "pad":
            pad = draw(st.sampled_from([b" ", b"\n", b"\x00", b"\x0c", b"\xa0"]))
            return pad + data + pad
        case "trail":
            return data + draw(st.sampled_from([b"}", b",", b"{}", b"\n{}", b"x"]))
        case _:
            return b'{"prompt": 1' + b"0" * draw(st.integers(1, 5000)) + b"}"


@st.composite
def deep_json(draw: st.DrawFn) -> bytes:
    """Nesting around the depth where a recursive parser gives up (about 1,000)."""
    depth = draw(st.sampled_from([999, 1000, 1001, 2000, 5000]) | st.integers(1, 5000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"prompt":', b"}")]))
    return opener * depth + b"1" + closer * draw(st.sampled_from([depth, 0, 1]))


BODIES = st.one_of(
    JSON_BYTES,
    near_json(),
    deep_json(),
    st.binary(max_size=300),
    st.sampled_from([b"null", b"[]", b'"hi"', b"prompt=hi", b"message=hi"]),
)


@st.composite
def query_part(draw: st.DrawFn) -> str:
    """A key or a value as it goes in the URL: encoded well, badly or not at all."""
    how = draw(st.sampled_from(["quote", "plus", "bytes", "raw", "bad", "long"]))
    match how:
        case "quote":
            return quote(draw(PROMPTS), safe="")
        case "plus":
            return quote_plus(draw(PROMPTS))
        case "bytes":
            return quote_from_bytes(draw(st.binary(max_size=30)), safe="")
        case "raw":
            return draw(st.text(RAW_QUERY_CHARS, max_size=30))
        case "bad":
            junk = st.sampled_from(BAD_ESCAPES) | st.text(RAW_QUERY_CHARS, max_size=3)
            return "".join(draw(st.lists(junk, max_size=6)))
        case _:
            return "x" * draw(st.integers(MAX_PROMPT_CHARS - 2, MAX_PROMPT_CHARS + 2))


@st.composite
def query_string(draw: st.DrawFn) -> str:
    """``?...`` with repeated, empty, bare and oddly separated pairs, or none."""
    how = draw(st.sampled_from(["pairs"] * 8 + ["empty", "many"]))
    if how == "empty":
        return draw(st.sampled_from(["", "?", "??", "?&", "?="]))
    if how == "many":  # around Django's DATA_UPLOAD_MAX_NUMBER_FIELDS (1,000)
        return "?" + "a&" * draw(st.integers(995, 1500)) + "prompt=hi"
    keys = st.sampled_from(["prompt", "Prompt", "prompt[]", "", "p%72ompt"])
    pairs = []
    for _ in range(draw(st.integers(0, 5))):
        key = draw(mostly(keys, query_part(), 3))
        form = draw(st.sampled_from(["{k}={v}", "{k}={v}", "{k}", "={v}", "{k}=={v}"]))
        pairs.append(form.format(k=key, v=draw(query_part())))
    return "?" + draw(st.sampled_from(["&", "&", ";", "&&"])).join(pairs)


ASSET_NAMES = st.one_of(
    st.sampled_from(["CHAT.JS", "chat.js.bak", "index.html", "..", ".", "%2e%2e"]),
    st.text(min_size=1, max_size=30)
    .filter(lambda name: "/" not in name)
    .map(lambda name: quote(name, safe="")),
    st.binary(min_size=1, max_size=20)
    .filter(lambda name: b"/" not in name)
    .map(lambda name: quote_from_bytes(name, safe="")),
)
METHODS = st.sampled_from(
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
    + ["PROPFIND", "QUERY", "get", "Post"]
) | st.text(string.ascii_uppercase + "-_", min_size=1, max_size=10)
HEADER_TEXT = mostly(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40),
    4,
).map(lambda text: text.encode("latin-1"))
HEADER_JUNK = st.sampled_from([b"\x00", b"\x7f", b"a\x01b", b"\xff\xfe", b"\x1b[0m"])


def host_values(port: int) -> list[bytes | None]:
    """``Host`` values that Django's default ``ALLOWED_HOSTS`` accepts (None: none)."""
    own = [f"127.0.0.1:{port}", f"localhost:{port}", "127.0.0.1", f"[::1]:{port}"]
    return [*[host.encode() for host in own], None]


def extra_headers(port: int, token: str | None) -> st.SearchStrategy[Headers]:
    """Headers that browsers, proxies and fuzzers send; never the framing ones."""
    own = f"127.0.0.1:{port}"
    origins = [
        f"http://{own}", f"https://{own}", f"http://localhost:{port}",
        f"http://{own}/", f"HTTP://{own.upper()}", CORS_ORIGIN, CORS_ORIGIN + "/",
        CORS_ORIGIN.upper(), "http://evil.example", "null", "", "http://[::1",
        "file://", f"http://{own}@evil.example",
    ]  # fmt: skip
    tokens = [f"Bearer {token}", f"bearer  {token} ", f"Bearer {token}x", "Bearer"]
    name = st.text(TOKEN_CHARS, min_size=1, max_size=20).map(
        lambda n: ("X-" + n if n.lower() in FRAMING_HEADERS else n).encode()
    )
    named: list[tuple[str, st.SearchStrategy[bytes]]] = [
        ("Origin", st.sampled_from(origins).map(str.encode) | HEADER_TEXT),
        ("Sec-Fetch-Site", st.sampled_from([b"same-origin", b"same-site"])),
        ("Sec-Fetch-Site", st.sampled_from([b"cross-site", b"none"]) | HEADER_TEXT),
        ("Authorization", st.sampled_from(tokens).map(str.encode) | HEADER_TEXT),
        ("Cookie", HEADER_TEXT | st.just(b"sessionid=x; csrftoken=y; =; ;;")),
        ("Accept", st.sampled_from([b"text/event-stream", b"*/*"]) | HEADER_TEXT),
        ("Accept-Encoding", st.sampled_from([b"gzip, br", b"identity;q=0"])),
        ("Access-Control-Request-Method", st.sampled_from([b"POST", b"GET"])),
        ("Access-Control-Request-Headers", HEADER_TEXT),
        ("X-Forwarded-For", HEADER_TEXT),
        ("X-Forwarded-Host", HEADER_TEXT),
        ("Referer", HEADER_TEXT),
        ("User-Agent", HEADER_TEXT),
        ("Range", st.just(b"bytes=0-1")),
        ("If-None-Match", st.just(b'"x"')),
        ("Last-Event-ID", HEADER_TEXT),
    ]
    one = st.one_of(
        *[st.tuples(st.just(n.encode()), value) for n, value in named],
        st.tuples(name, HEADER_TEXT),
        st.tuples(name, HEADER_JUNK),
    )
    return mostly(st.just([]), st.lists(one, min_size=1, max_size=4), 2)


def chunked(body: bytes, cuts: list[int], upper: bool) -> bytes:
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    size = b"%X" if upper else b"%x"
    chunks = b"".join(size % len(p) + b"\r\n" + p + b"\r\n" for p in pieces if p)
    return chunks + b"0\r\n\r\n"


@st.composite
def requests(
    draw: st.DrawFn, port: int, route: Route, token: str | None = None
) -> FuzzRequest:
    """A request for ``route`` that is mostly right, with a few parts drawn wrong.

    ``token``: the server's bearer token, which a good request sends.
    """
    own_method, path = route
    method = draw(mostly(st.just(own_method), METHODS, 3))
    name = draw(mostly(st.sampled_from(["chat.js", "chat.css"]), ASSET_NAMES, 2))
    good_query = st.just("")
    if own_method == "GET" and route_streams(route):
        good_query = GOOD_PROMPTS.map(lambda prompt: "?prompt=" + quote(prompt))
    query = draw(mostly(good_query, query_string(), 3))
    target = (path.format(name=name) + query).encode("latin-1")[:MAX_TARGET_BYTES]
    version = draw(mostly(st.just(b"HTTP/1.1"), st.just(b"HTTP/1.0"), 8))

    headers: Headers = []
    other_hosts = st.just(b"evil.example") | HEADER_TEXT | HEADER_JUNK
    host = draw(mostly(st.sampled_from(host_values(port)), other_hosts, 10))
    if host is not None:
        headers.append((b"Host", host))
    types = st.sampled_from(CONTENT_TYPES).map(str.encode) | HEADER_TEXT
    json_types = st.sampled_from(JSON_TYPES).map(str.encode)
    if own_method == "POST":
        content_type = draw(mostly(json_types, st.none() | types, 5))
    else:
        content_type = draw(mostly(st.none(), types, 4))
    if content_type is not None:
        headers.append((b"Content-Type", content_type))
    if token is not None and draw(mostly(st.just(True), st.just(False), 5)):
        headers.append((b"Authorization", b"Bearer " + token.encode()))
    headers += draw(extra_headers(port, token))
    connection = draw(st.sampled_from([b"close", b"close", b"keep-alive", None]))
    if connection is not None:
        headers.append((b"Connection", connection))
    if draw(mostly(st.just(False), st.just(True), 20)):
        headers.append((b"Expect", b"100-continue"))
    headers = draw(st.permutations(headers))

    if method == own_method == "POST":
        key = "message" if path == "/api/stream" else "prompt"
        body = draw(mostly(good_body(key), BODIES, 2))
    else:
        body = draw(mostly(st.just(b""), BODIES, 4))
    framings = st.sampled_from(["none", "chunked", "short", "long", "junk", "both"])
    framing = draw(mostly(st.just("length" if body else "none"), framings, 4))
    if framing == "none":
        body = b""
    elif framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
    elif framing == "short":
        headers.append((b"Content-Length", b"%d" % draw(st.integers(0, len(body)))))
    elif framing == "long":
        extra = draw(st.integers(1, 1000))
        headers.append((b"Content-Length", b"%d" % (len(body) + extra)))
    elif framing == "junk":
        headers.append((b"Content-Length", draw(st.sampled_from(CONTENT_LENGTH_JUNK))))
    else:  # "chunked", or "both" (which gunicorn refuses: request smuggling)
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        body = chunked(body, cuts, draw(st.booleans()))
        headers.append((b"Transfer-Encoding", b"chunked"))
        if framing == "both":
            headers.append((b"Content-Length", b"%d" % len(body)))
    return FuzzRequest(method, target, version, tuple(headers), body, framing, route)


MANY_FIELDS = "?" + "a&" * 1000 + "prompt=hi"


def pinned(
    port: int,
    head: str,
    body: bytes = b"",
    framing: str = "length",
    route: Route | None = None,
) -> FuzzRequest:
    """A request written out: ``head`` is the request line, then a header a line."""
    start, *lines = head.split("\n")
    method, target = start.split(" ")
    given = dict(line.split(": ", 1) for line in lines)
    headers = {"Host": f"127.0.0.1:{port}", "Connection": "close", **given}
    if framing == "length" and body:
        headers.setdefault("Content-Length", str(len(body)))
    return FuzzRequest(
        method,
        target.encode(),
        b"HTTP/1.1",
        tuple((k.encode(), v.encode("latin-1")) for k, v in headers.items()),
        body,
        framing,
        route or next(r for r in ROUTES if target.split("?")[0] == r[1]),
    )


def classics(port: int, route: Route, token: str | None) -> list[FuzzRequest]:
    """Inputs known to break servers like these: each test sends them all first."""
    own, path = route
    path = path.format(name="chat.js")
    auth = f"\nAuthorization: Bearer {token}" if token else ""
    methods = [own, "TRACE", "get", "HEAD", "PUT"]
    heads = [f"{method} {path}{auth}" for method in methods]
    heads += [
        f"OPTIONS {path}\nOrigin: {CORS_ORIGIN}\nAccess-Control-Request-Method: {own}",
        f"{own} {path}\nOrigin: http://evil.example{auth}",
        f"{own} {path}\nOrigin: http://[::1{auth}",
        f"{own} {path}\nSec-Fetch-Site: cross-site{auth}",
        f"{own} {path}\nAuthorization: Bearer \u00ff",
        f"{own} {path}{MANY_FIELDS}\nContent-Type: text/plain; charset=utf-8{auth}",
        f"{own} {path}\nHost: x.example{auth}",  # not in DJANGO_ALLOWED_HOSTS
    ]
    out = [
        pinned(port, f"{own} {path}\nContent-Length: \u00b2{auth}", b"", "junk", route)
    ]
    if own == "GET":
        queries = [
            "?prompt=%FF%FE", "?prompt=%ED%A0%80", "?prompt=", "?prompt=%20",
            "?prompt=a&prompt=", "?prompt", "?prompt=%00", MANY_FIELDS,
            "?prompt=" + "x" * (MAX_PROMPT_CHARS + 1),
        ]  # fmt: skip
        heads += [f"GET {path}{query}{auth}" for query in queries]
        return out + [pinned(port, head, route=route) for head in heads]
    key = "message" if path == "/api/stream" else "prompt"
    json_head = f"POST {path}\nContent-Type: application/json{auth}"
    bodies = [
        b"", b"null", b"[]", b"\xff\xfe", b"[" * 3000, b'{"%s":' % key.encode() * 2000,
        b'{"%s": "\\ud83d"}' % key.encode(),
        b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
        b'{"messages": [{"role": ["user"], "content": "hi"}]}',
        b'{"messages": [{"role": "user", "content": ["hi"]}]}',
        b'{"messages": [{"role": {"a": 1}, "content": "hi"}], "%s": 1}' % key.encode(),
        b'{"%s": NaN}' % key.encode(), b'{"%s": 1e999}' % key.encode(),
        b'{"%s": 1%s}' % (key.encode(), b"0" * 5000),
        b'\xef\xbb\xbf{"%s": "hi"}' % key.encode(),
        json.dumps({key: "hi"}).encode("utf-16"),
        json.dumps({key: "x" * (MAX_PROMPT_CHARS + 1)}).encode(),
    ]  # fmt: skip
    out += [pinned(port, head, route=route) for head in heads]
    out += [pinned(port, json_head, body, route=route) for body in bodies]
    for content_type in ["text/plain", "application/json; charset=utf-16", ""]:
        head = f"POST {path}\nContent-Type: {content_type}{auth}"
        out.append(pinned(port, head, b'{"%s": "hi"}' % key.encode(), route=route))
    short = f"{json_head}\nContent-Length: 50"  # then the client stops sending
    out.append(pinned(port, short, b'{"%s": "hi"}' % key.encode(), "long", route))
    out.append(
        pinned(
            port,
            f"{json_head}\nTransfer-Encoding: chunked",
            chunked(b'{"%s": "hi"}' % key.encode(), [3, 4], False),
            "chunked",
            route,
        )
    )
    return out


# --- Exchange ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    complete: bool  # the body's framing ended as it should


def exchange(server: Server, request: FuzzRequest) -> Reply:
    """Send ``request`` on a new connection; read the whole answer, however framed."""
    address = ("127.0.0.1", server.port)
    with socket.create_connection(address, READ_TIMEOUT_SECONDS) as sock:
        try:
            sock.sendall(request.wire())
            if request.half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused before the body and closed: its answer is on its way
        response = http.client.HTTPResponse(sock, method=request.method)
        try:
            response.begin()
            try:
                body, complete = response.read(), True
            except http.client.IncompleteRead as cut:
                body, complete = cut.partial, False
            return Reply(response.status, response.headers, body, complete)
        finally:
            response.close()


# --- Checks ------------------------------------------------------------------------


def leaked(reply: Reply, request: FuzzRequest) -> set[str]:
    """Traceback text or exception names in the body, unless the request sent them."""
    sent = unquote_to_bytes(request.wire())
    found = {m.group() for m in LEAK.finditer(reply.body)}
    return {text.decode("latin-1") for text in found if text not in sent}


def classify(request: FuzzRequest, reply: Reply) -> str:
    """Assert the contract on one answer; say what kind of answer it was."""
    assert not leaked(reply, request), f"the body shows {leaked(reply, request)}"
    assert reply.status in {200, 204} or 400 <= reply.status < 500, reply.status
    if reply.headers.get(SECURITY_HEADER[0]) != SECURITY_HEADER[1]:
        assert reply.status >= 400, "a success without the apps' headers"
        return "server 4xx"  # gunicorn's or a development server's own answer
    if reply.status >= 400:
        assert reply.headers["Content-Type"] == "application/json", reply.body
        required = {401: "WWW-Authenticate", 405: "Allow", 429: "Retry-After"}
        if reply.status in required:
            assert reply.headers[required[reply.status]], required[reply.status]
        if request.method != "HEAD":  # an answer to HEAD has no body
            error = json.loads(reply.body)
            assert list(error) == ["error"], error
            assert set(error["error"]) == {"message", "type"}, error
            assert all(isinstance(v, str) and v for v in error["error"].values())
        return f"app {reply.status}"
    if reply.status == 204 or request.method == "HEAD":
        return f"app {reply.status}"
    if not request.half_close:  # else the server may have seen a client that left
        assert reply.complete, reply.body
        if reply.headers["Content-Type"].startswith("text/event-stream"):
            assert reply.body.endswith(b"data: [DONE]\n\n"), reply.body
    return "stream" if route_streams(request.route) else "app 200"


def new_log(server: Server, offset: int) -> str:
    with server.log_path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route[1])
@pytest.mark.parametrize(("kind", "config"), TARGETS)
def test_any_request_gets_a_2xx_or_a_contract_4xx(
    pool: ServerPool, kind: ServerKind, config: str, route: Route
) -> None:
    server = pool.get(kind, config)
    token = ACCESS_TOKEN if config == "guarded" else None
    log_offset = server.log_path.stat().st_size
    seen: Counter[str] = Counter()
    fuzzed = requests(server.port, route, token)

    @settings(FUZZ, max_examples=EXAMPLES[config] if kind.production else DEV_EXAMPLES)
    @seed(zlib.crc32(f"{kind.name} {config} {route}".encode()))
    @given(request=fuzzed)
    def answer_keeps_the_contract(request: FuzzRequest) -> None:
        seen[classify(request, exchange(server, request))] += 1

    for request in classics(server.port, route, token):
        answer_keeps_the_contract = example(request=request)(answer_keeps_the_contract)
    answer_keeps_the_contract()
    log = new_log(server, log_offset)
    assert not LOG_FAILURE.search(log), log[-3000:]
    # Not a vacuous pass: the app answered, both with successes and with errors.
    refused = sum(n for what, n in seen.items() if what.startswith("app 4"))
    assert seen["stream" if route_streams(route) else "app 200"] and refused, seen
