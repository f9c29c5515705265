"""The lean HTTP/1.1 transport against a raw socket server that writes exact bytes.

Through the SDK and real servers the transport is covered by every contract test;
here are the wire-level cases a well-behaved fake never produces: chunks split
anywhere, chunk extensions and trailers, sized and close-delimited bodies, HTTP/1.0,
bytes after a body's end, a pooled connection the server closed meanwhile, a server
that reads a request and hangs up, headers that would break the request, timeouts.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx2
import pytest

from shared import transport
from shared.transport import LeanTransport
from tests.gevent_rerun import assert_passes_under_gevent, patched

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


@dataclass
class RawServer:
    """Answers each request with the next scripted response: pieces written apart.

    A response of ``None`` reads the request and closes the connection unanswered.
    """

    responses: list[list[bytes] | None]
    close_after: bool = False  # close each connection after one response
    reset: bool = False  # close with a RST, not a FIN
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            pending = b""
            while self.responses:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(pending) < length:
                    pending += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + pending[:length])
                pending = pending[length:]
                response = self.responses.pop(0)
                for piece in response or ():
                    conn.sendall(piece)
                    time.sleep(0.02)  # a separate read on the client side
                if self.close_after or response is None:
                    if self.reset:  # SO_LINGER on, 0 s: close() sends a RST
                        linger = struct.pack("ii", 1, 0)
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    return


@pytest.fixture
def client() -> Iterator[httpx2.Client]:
    with httpx2.Client(transport=LeanTransport(), timeout=2.0) as client:
        yield client


def stream(client: httpx2.Client, server: RawServer) -> tuple[int, list[bytes]]:
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"
    with client.stream("POST", url, json={"stream": True}) as response:
        return response.status_code, list(response.iter_raw())


def test_chunks_split_anywhere_are_put_back_together(client: httpx2.Client) -> None:
    body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    server = RawServer([[CHUNKED, *(body[i : i + 1] for i in range(len(body)))]])
    status, pieces = stream(client, server)
    assert status == 200 and b"".join(pieces) == b"hello world"


def test_chunks_that_arrive_together_come_out_as_one_piece(
    client: httpx2.Client,
) -> None:
    events = [b"data: %d\n\n" % i for i in range(50)]
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    status, pieces = stream(client, RawServer([[CHUNKED + body]]))
    assert pieces == [b"".join(events)]


@pytest.mark.parametrize(
    "response",
    [
        HEAD + b"Content-Length: 11\r\n\r\nhello world",
        HEAD + b"Connection: close\r\n\r\nhello world",
    ],
    ids=["sized", "close-delimited"],
)
def test_sized_and_close_delimited_bodies(
    client: httpx2.Client, response: bytes
) -> None:
    server = RawServer([[response]], close_after=b"close" in response)
    assert stream(client, server) == (200, [b"hello world"])


def test_a_body_read_to_its_end_returns_its_connection(client: httpx2.Client) -> None:
    answer = CHUNKED + b"2\r\nok\r\n0\r\n\r\n"
    server = RawServer([[answer] for _ in range(5)])
    for _ in range(5):
        assert stream(client, server) == (200, [b"ok"])
    assert server.connections == 1


def test_a_body_closed_early_is_not_reused(client: httpx2.Client) -> None:
    server = RawServer(
        [[CHUNKED + b"2\r\nok\r\n"], [CHUNKED + b"2\r\nok\r\n0\r\n\r\n"]]
    )
    url = f"http://127.0.0.1:{server.port}/"
    with client.stream("POST", url, content=b"{}") as response:
        next(response.iter_raw())
    assert stream(client, server) == (200, [b"ok"])
    assert server.connections == 2


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_pooled_connection_the_server_closed_is_replaced(
    client: httpx2.Client, reset: bool
) -> None:
    answer = [CHUNKED + b"2\r\nok\r\n0\r\n\r\n"]
    server = RawServer([answer, answer], close_after=True, reset=reset)
    assert stream(client, server) == (200, [b"ok"])
    time.sleep(0.1)  # the server has closed the idle connection
    assert stream(client, server) == (200, [b"ok"])
    assert server.connections == 2


def test_a_pooled_connection_reset_before_the_first_write_is_replaced_once(
    client: httpx2.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reset came after the check at checkout: the write fails, nothing left."""
    answer = [CHUNKED + b"2\r\nok\r\n0\r\n\r\n"]
    server = RawServer([answer, answer], close_after=True, reset=True)
    assert stream(client, server) == (200, [b"ok"])
    time.sleep(0.1)  # the server has reset the idle connection
    monkeypatch.setattr(transport._Connection, "is_usable", lambda self: True)
    assert stream(client, server) == (200, [b"ok"])
    assert (server.connections, len(server.requests)) == (2, 2)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_a_request_that_went_out_is_not_sent_again_on_other_connections(
    client: httpx2.Client, reset: bool
) -> None:
    """The upstream read it, then hung up: that is the SDK's to retry, or not."""
    answer = [CHUNKED + b"2\r\nok\r\n0\r\n\r\n"]
    server = RawServer([answer] * 3 + [None] * 5, reset=reset)
    url = f"http://127.0.0.1:{server.port}/"
    with ExitStack() as open_streams:  # three at once: three pooled connections
        responses = [
            open_streams.enter_context(client.stream("POST", url, content=b"{}"))
            for _ in range(3)
        ]
        assert [b"".join(r.iter_raw()) for r in responses] == [b"ok"] * 3
    with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
        client.post(url, content=b"poison")
    assert server.connections == 3
    assert [r.endswith(b"poison") for r in server.requests] == [False] * 3 + [True]


@pytest.mark.parametrize(
    ("head", "pooled"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", False),
        (
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n",
            True,
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", True),
    ],
    ids=["1.0", "1.0-keep-alive", "1.1-close", "1.1"],
)
def test_a_connection_is_pooled_only_when_the_response_allows_it(
    client: httpx2.Client, head: bytes, pooled: bool
) -> None:
    """HTTP/1.0 means close unless the server says keep-alive; 1.1, the reverse."""
    server = RawServer([[head + b"ok"]] * 2)
    for _ in range(2):
        assert stream(client, server) == (200, [b"ok"])
    assert server.connections == (1 if pooled else 2)


def test_bytes_after_a_chunked_body_keep_its_connection_out_of_the_pool(
    client: httpx2.Client,
) -> None:
    """A stray CRLF after the last chunk would be read as the next response's head."""
    sloppy = [CHUNKED + b"2\r\nok\r\n0\r\n\r\n\r\n"]
    server = RawServer([sloppy, sloppy, sloppy])
    for _ in range(2):
        assert stream(client, server) == (200, [b"ok"])
    assert (server.connections, len(server.requests)) == (2, 2)


def test_the_request_goes_out_whole(client: httpx2.Client) -> None:
    server = RawServer([[HEAD + b"Content-Length: 0\r\n\r\n"]])
    stream(client, server)
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in head.lower() and body == b'{"stream":true}'


def test_a_silent_server_is_a_read_timeout(client: httpx2.Client) -> None:
    server = RawServer([[CHUNKED, b"2\r\nok\r\n", b""], []])  # then silence
    with pytest.raises(httpx2.ReadTimeout):
        url = f"http://127.0.0.1:{server.port}/"
        with client.stream("POST", url, content=b"{}", timeout=0.3) as response:
            list(response.iter_raw())


def test_nothing_listening_is_a_connect_error(client: httpx2.Client) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening
        port = unused.getsockname()[1]
        with pytest.raises(httpx2.ConnectError):
            client.post(f"http://127.0.0.1:{port}/", content=b"{}")


def test_a_malformed_chunk_is_a_protocol_error(client: httpx2.Client) -> None:
    server = RawServer([[CHUNKED + b"zz\r\nnope\r\n"]])
    with pytest.raises(httpx2.RemoteProtocolError):
        stream(client, server)


def test_an_upstream_on_an_address_is_reached_without_a_lookup(
    client: httpx2.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under gevent a lookup goes through a thread pool: an address needs none."""

    def no_lookup(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"looked up {args[0]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    server = RawServer([[CHUNKED + b"2\r\nhi\r\n0\r\n\r\n"]])
    assert stream(client, server) == (200, [b"hi"])


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer sk-secret-1234\n"},
        {"Authorization": "Bearer sk-secret-1234\r\nX-Injected: 1"},
        {"Authorization": "Bearer sk-secret\x001234"},
        {"X-Bad\nName": "sk-secret-1234"},
    ],
    ids=["trailing-newline", "crlf", "nul", "name"],
)
def test_a_header_with_a_line_break_or_nul_is_refused_before_sending(
    client: httpx2.Client, headers: dict[str, str]
) -> None:
    """As httpx2's own transport does, with a message that does not quote the key."""
    server = RawServer([[HEAD + b"Content-Length: 0\r\n\r\n"]])
    url = f"http://127.0.0.1:{server.port}/"
    with pytest.raises(httpx2.LocalProtocolError) as refused:
        client.post(url, content=b"{}", headers=headers)
    assert "secret" not in str(refused.value) and "1234" not in str(refused.value)
    assert server.connections == 0


@pytest.mark.skipif(not patched(), reason="the check differs under gevent only")
def test_checking_a_pooled_connection_never_yields_to_other_greenlets() -> None:
    """The check polls for nothing with the OS's own ``poll``: gevent's would go
    through its hub (other greenlets run meanwhile), at eight times the CPU."""
    import gevent

    idle, peer = socket.socketpair()
    with idle, peer:
        ran: list[bool] = []
        other = gevent.spawn(ran.append, True)
        assert transport._Connection(idle).is_usable()
        assert not ran
        other.join(timeout=5)
        peer.close()
        assert not transport._Connection(idle).is_usable()


@pytest.mark.skipif(patched(), reason="this is the gevent run")
def test_the_transport_passes_these_tests_under_gevent_too() -> None:
    """Every test above runs again in a process patched as gunicorn's workers are."""
    assert_passes_under_gevent(__file__)
