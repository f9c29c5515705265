"""The lean HTTP/1.1 transport against a raw socket server that writes exact bytes.

Through the SDK and real servers the transport is covered by every contract test;
here are the wire-level cases a well-behaved fake never produces: chunks split
anywhere, chunk extensions and trailers, sized and close-delimited bodies, a pooled
connection the server closed meanwhile, timeouts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2
import pytest

from shared.transport import LeanTransport

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


@dataclass
class RawServer:
    """Answers each request with the next scripted response: pieces written apart."""

    responses: list[list[bytes]]
    close_after: bool = False  # close each connection after one response
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
                for piece in self.responses.pop(0):
                    conn.sendall(piece)
                    time.sleep(0.02)  # a separate read on the client side
                if self.close_after:
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


def test_a_pooled_connection_the_server_closed_is_replaced(
    client: httpx2.Client,
) -> None:
    answer = [CHUNKED + b"2\r\nok\r\n0\r\n\r\n"]
    server = RawServer([answer, answer], close_after=True)
    assert stream(client, server) == (200, [b"ok"])
    time.sleep(0.1)  # the server has closed the idle connection
    assert stream(client, server) == (200, [b"ok"])
    assert server.connections == 2


def test_the_request_goes_out_whole(client: httpx2.Client) -> None:
    server = RawServer([[HEAD + b"Content-Length: 0\r\n\r\n"]])
    stream(client, server)
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in head.lower() and body == b'{"stream":true}'


def test_a_silent_server_is_a_read_timeout(client: httpx2.Client) -> None:
    server = RawServer([[CHUNKED, b"2\r\nok\r\n"], []])
    server.responses[0].append(b"")  # then silence
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
