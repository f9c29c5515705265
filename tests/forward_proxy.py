"""A forward HTTP proxy for the tests: absolute-form requests and CONNECT tunnels.

Whatever host a request names, the proxy sends it to a fake upstream on 127.0.0.1:
plain requests to the plain one, tunnels to the TLS one. A base URL whose host never
resolves (``tests.fake_upstream.PROXY_ONLY_HOST``) is then reachable only through
the proxy, so a request that bypassed it fails instead of passing unnoticed. Every
request and tunnel is recorded.

Each client connection carries one request (the answer says ``Connection: close``),
which keeps the relay a byte pipe: the proxy never parses a response body.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

IO_TIMEOUT_SECONDS = 30.0  # a stuck pipe ends here, never hangs a test
MAX_HEAD_BYTES = 65536


@dataclass(frozen=True)
class ProxiedRequest:
    """What the proxy was asked: ``CONNECT host:port``, or a method, URL and body."""

    method: str
    target: str
    body: bytes = b""


class ForwardProxy:
    """The proxy on 127.0.0.1; use it as a context manager so it always stops."""

    def __init__(self, http_port: int, tls_port: int) -> None:
        self._http_port, self._tls_port = http_port, tls_port
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self.requests: list[ProxiedRequest] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True, name="proxy").start()

    def close(self) -> None:
        """Stop accepting and cut every open pipe."""
        self._listener.close()
        with self._lock:
            live = list(self._live)
        for sock in live:
            _shutdown(sock)

    def __enter__(self) -> ForwardProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._tracked(client):
            client.settimeout(IO_TIMEOUT_SECONDS)
            try:
                head, rest = _read_head(client)
                if head is None:
                    return
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, target, _ = request_line.split(" ", 2)
                if method == "CONNECT":
                    self._tunnel(client, target, rest)
                else:
                    self._forward(client, method, target, head, rest)
            except OSError:
                return  # a side went away: the pipe ends

    def _tunnel(self, client: socket.socket, target: str, rest: bytes) -> None:
        self._record(ProxiedRequest("CONNECT", target))
        with self._upstream(self._tls_port) as upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(rest)
            _pipe(client, upstream, b"")

    def _forward(
        self, client: socket.socket, method: str, url: str, head: bytes, rest: bytes
    ) -> None:
        """Send the request on in origin form, and the answer back, then close."""
        fields = head.split(b"\r\n")[1:]
        body = rest
        while len(body) < _content_length(fields):
            data = client.recv(65536)
            if not data:
                return
            body += data
        self._record(ProxiedRequest(method, url, body))
        path = "/" + url.split("://", 1)[-1].partition("/")[2]
        kept = [f for f in fields if _field_name(f) not in HOP_BY_HOP]
        request_line = f"{method} {path} HTTP/1.1".encode()
        out = b"\r\n".join([request_line, *kept, b"Connection: close", b"", body])
        with self._upstream(self._http_port) as upstream:
            upstream.sendall(out)
            answer, after = _read_head(upstream)
            if answer is not None:
                closing = b"\r\nConnection: close\r\n\r\n"
                _pipe(client, upstream, answer + closing + after)

    @contextmanager
    def _upstream(self, port: int) -> Iterator[socket.socket]:
        sock = socket.create_connection(("127.0.0.1", port), IO_TIMEOUT_SECONDS)
        with self._tracked(sock):
            yield sock

    @contextmanager
    def _tracked(self, sock: socket.socket) -> Iterator[None]:
        """Keep ``sock`` where ``close()`` finds it while in use; then close it."""
        with sock:
            with self._lock:
                self._live.add(sock)
            try:
                yield
            finally:
                with self._lock:
                    self._live.discard(sock)

    def _record(self, request: ProxiedRequest) -> None:
        with self._lock:
            self.requests.append(request)


HOP_BY_HOP = (b"connection", b"proxy-connection", b"keep-alive")


def _field_name(line: bytes) -> bytes:
    return line.partition(b":")[0].strip().lower()


def _content_length(fields: list[bytes]) -> int:
    found = (
        f.partition(b":")[2] for f in fields if _field_name(f) == b"content-length"
    )
    return int(next(found, b"0"))


def _pipe(client: socket.socket, upstream: socket.socket, first: bytes) -> None:
    """Copy both ways until either side closes; ``first`` goes to the client."""
    back = threading.Thread(target=_copy, args=(upstream, client, first), daemon=True)
    back.start()
    _copy(client, upstream, b"")
    back.join(IO_TIMEOUT_SECONDS)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    """The head without its blank line, and the bytes read after it (None at EOF)."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_HEAD_BYTES:
            return None, b""
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    return data[:end], data[end + 4 :]


def _copy(source: socket.socket, sink: socket.socket, first: bytes) -> None:
    """``first``, then what ``source`` sends, to ``sink``; then end both."""
    try:
        if first:
            sink.sendall(first)
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shutdown(source)
        _shutdown(sink)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
