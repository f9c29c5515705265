"""A lean HTTP/1.1 transport for the openai client: pooled, and reading in bulk.

Why not httpx's own: it hands a streamed body over one HTTP chunk at a time, and an
OpenAI-compatible server sends every SSE event as a chunk of its own, so each event
pays for a pass through httpcore and h11. Here a body yields what one socket read
delivered, however many chunks that was, so a relay's work per read is shared by
every event in it. Its pool also costs the same whatever the number of open
streams (httpcore scans every connection on each request and each close).

It sits under the SDK as the client's default transport, so the SDK still builds
the URL, authenticates, retries and maps errors. It speaks only what an OpenAI
request needs: HTTP/1.1 over TCP or TLS, request bodies in memory, responses with a
chunked, sized or close-delimited body. It never talks to a proxy: the origins that
the environment sends through one (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``,
less ``NO_PROXY``) get httpx2's own proxy transports (``shared.upstream``).

Deliberate choices:

- A request is sent again on a new connection only when its first write on a
  pooled connection failed, so that no byte of it left, and only once. Once a byte
  may have reached the upstream, any failure goes up to the SDK, whose retry policy
  (``max_retries``) alone decides whether the upstream may get the prompt again.
- An idle connection is reused for ``IDLE_SECONDS``, less than the 5 s after which
  uvicorn (vLLM, LiteLLM) and Node close one: a request written just as the server
  closes the connection would fail, and is not replayed.
- A connection goes back to the pool only when the response said it may (HTTP/1.1
  without ``Connection: close``, HTTP/1.0 with ``Connection: keep-alive``) and its
  body ended exactly at the end of what was read.
"""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2

READ_SIZE = 65536
MAX_HEAD_BYTES = 65536
IDLE_SECONDS = 4.0  # an idle connection older than this is closed, not reused
MAX_IDLE_PER_ORIGIN = 100
FIRST_WRITE_BYTES = 16384  # one TLS record: a first write that fails sent nothing
_ILLEGAL_IN_HEADER = re.compile(rb"[\r\n\0]")

Origin = tuple[str, str, int]


class LeanTransport(httpx2.BaseTransport):
    """``handle_request`` for ``httpx2.Client``: one request on a pooled connection."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[tuple[float, _Connection]]] = {}
        self._lock = threading.Lock()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"Unsupported URL scheme {url.scheme!r}")
        origin = (
            url.scheme,
            url.host,
            url.port or (443 if url.scheme == "https" else 80),
        )
        timeouts = request.extensions.get("timeout", {})
        head = _request_head(request)
        connection = self._send(origin, head + request.read(), timeouts)
        read_timeout = timeouts.get("read")
        try:
            version, status, headers = connection.read_head(read_timeout)
        except BaseException:
            connection.close()
            raise
        no_body = request.method == "HEAD" or status in (204, 304)
        stream = _Body(
            connection, version, headers, no_body, read_timeout, self, origin
        )
        return httpx2.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": version, "network_stream": connection},
        )

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for _, connection in connections:
                connection.close()

    def _send(
        self, origin: Origin, data: bytes, timeouts: dict[str, Any]
    ) -> _Connection:
        """A connection that has written ``data``: a pooled one, else a new one.

        A pooled connection is given up for a new one only when its first write
        failed: then no byte of the request left, and the upstream cannot have seen
        it. Any other failure goes up to the SDK, which decides whether to retry.
        """
        pooled = self._checkout(origin)
        if pooled is not None:
            try:
                pooled.send(data, timeouts.get("write"))
                return pooled
            except _NothingSent:
                pooled.close()  # closed by the server since the check: a new one
            except BaseException:
                pooled.close()
                raise
        connection = self._connect(origin, timeouts)
        try:
            connection.send(data, timeouts.get("write"))
        except BaseException:
            connection.close()
            raise
        return connection

    def _checkout(self, origin: Origin) -> _Connection | None:
        """An idle connection to ``origin`` that is still usable, if there is one."""
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                since, connection = idle.pop()
            if time.monotonic() - since < IDLE_SECONDS and connection.is_usable():
                return connection
            connection.close()

    def _checkin(self, origin: Origin, connection: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < MAX_IDLE_PER_ORIGIN:
                idle.append((time.monotonic(), connection))
                return
        connection.close()

    def _connect(self, origin: Origin, timeouts: dict[str, Any]) -> _Connection:
        scheme, host, port = origin
        try:
            sock = _open_socket(host, port, timeouts.get("connect"))
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpx2.ConnectError(str(exc)) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._ssl_context is None:  # made here, after gevent's patching
                    self._ssl_context = httpx2.create_ssl_context()
                sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
        except BaseException as exc:
            # Also a greenlet killed in the TLS handshake (its stream was closed):
            # the upstream must see the connection end now, not at garbage collection.
            sock.close()
            if isinstance(exc, TimeoutError):
                raise httpx2.ConnectTimeout(str(exc)) from exc
            if isinstance(exc, OSError):
                raise httpx2.ConnectError(str(exc)) from exc
            raise
        return _Connection(sock)


def _open_socket(host: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to ``host``, looked up only when it is a name.

    ``create_connection`` resolves even an address, and under gevent a lookup
    is a round trip through its thread pool (about 0.2 ms of CPU): for an
    upstream on an address (a local vLLM, a sidecar), a burst of streams would
    pay it once each.
    """
    try:
        family = (
            socket.AF_INET6
            if ipaddress.ip_address(host).version == 6
            else socket.AF_INET
        )
    except ValueError:
        return socket.create_connection((host, port), timeout)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _chunk_size(line: bytes) -> int:
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise httpx2.RemoteProtocolError("Bad chunk size line") from None


def _request_head(request: httpx2.Request) -> bytes:
    target = request.url.raw_path
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), target)]
    for name, value in request.headers.raw:
        _check_header(name, value)
        lines.append(b"%s: %s" % (name, value))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _check_header(name: bytes, value: bytes) -> None:
    """Refuse a line break or NUL, which would end the header early on the wire.

    The message never quotes the value: it may be the API key (one read from a file
    often ends with a newline).
    """
    if _ILLEGAL_IN_HEADER.search(name):
        raise httpx2.LocalProtocolError(
            f"Illegal header name {name!r}: remove its CR, LF or NUL characters."
        )
    if _ILLEGAL_IN_HEADER.search(value):
        raise httpx2.LocalProtocolError(
            f"Illegal value for the header {name.decode('latin-1')!r}: it holds a CR,"
            " LF or NUL character; remove it (a key read from a file often ends with"
            " a newline)."
        )


def _os_poll() -> Any:
    """``select.poll()`` as the OS has it, even in a process gevent has patched.

    A poll that waits for nothing never blocks, so gevent's cooperative version
    only adds cost: about 40 µs per check of a pooled connection, against 5.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")()
    return select.poll()


class _NothingSent(httpx2.WriteError):
    """The first write of a request failed: not one byte of it left."""


class _Connection:
    """A socket with its unread bytes; also the response's ``network_stream``.

    It is the body's ``pollable`` (see ``shared.streaming.Pollable``): a body here
    yields every complete chunk before it reads again, so what it holds back is
    only ``buffer`` (before the body's first read), what TLS decrypted, and its
    own end once seen (``body_ended``).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.body_ended = False  # the body saw its end, and has yet to return
        self.timeout: float | None = None  # of the body's reads

    def get_extra_info(self, name: str) -> Any:
        if name == "pollable":
            return self
        return self.sock if name == "socket" else None

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_timeout(self) -> float | None:
        return self.timeout

    def pending(self) -> int:
        tls_pending = getattr(self.sock, "pending", None)
        held = len(self.buffer) + self.body_ended
        return held + (tls_pending() if tls_pending else 0)

    def is_usable(self) -> bool:
        """Idle and unread: readable now would mean closed (or garbage) by the peer."""
        poller = _os_poll()  # not select(): descriptors go past 1024 under load
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def send(self, data: bytes, timeout: float | None) -> None:
        """Write ``data``; :class:`_NothingSent` when the very first write failed."""
        self.sock.settimeout(timeout)
        view = memoryview(data)
        try:
            sent = self.sock.send(view[:FIRST_WRITE_BYTES])
        except TimeoutError as exc:
            raise httpx2.WriteTimeout(str(exc)) from exc
        except OSError as exc:  # e.g. reset: a pooled connection had gone stale
            raise _NothingSent(str(exc)) from exc
        try:
            self.sock.sendall(view[sent:])
        except TimeoutError as exc:
            raise httpx2.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpx2.WriteError(str(exc)) from exc

    def recv(self, timeout: float | None) -> bytes:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(READ_SIZE)
        except TimeoutError as exc:
            raise httpx2.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpx2.ReadError(str(exc)) from exc

    def read_head(
        self, timeout: float | None
    ) -> tuple[bytes, int, list[tuple[bytes, bytes]]]:
        """The HTTP version, status and headers of the response (1xx skipped)."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise httpx2.RemoteProtocolError("Response head too large")
                data = self.recv(timeout)
                if not data:
                    raise httpx2.RemoteProtocolError("Server disconnected")
                self.buffer += data
                end = self.buffer.find(b"\r\n\r\n")
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            status_line, *header_lines = head.split(b"\r\n")
            parts = status_line.split(b" ", 2)
            if (
                len(parts) < 2
                or not parts[0].startswith(b"HTTP/1.")
                or not parts[1].isdigit()
            ):
                raise httpx2.RemoteProtocolError(
                    f"Bad status line {status_line[:80]!r}"
                )
            status = int(parts[1])
            if 100 <= status < 200:
                continue
            headers = []
            for line in header_lines:
                name, colon, value = line.partition(b":")
                if not colon:
                    raise httpx2.RemoteProtocolError("Bad header line")
                headers.append((name.strip(), value.strip()))
            return parts[0], status, headers

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Body(httpx2.SyncByteStream):
    """The response body, one item per socket read; the connection goes back to the
    pool when the body was read to its end, and is closed otherwise."""

    def __init__(
        self,
        connection: _Connection,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        no_body: bool,
        timeout: float | None,
        pool: LeanTransport,
        origin: Origin,
    ) -> None:
        fields = {name.lower(): value.lower() for name, value in headers}
        connection.body_ended = False
        connection.timeout = timeout
        self._connection: _Connection | None = connection
        self._timeout = timeout
        self._pool, self._origin = pool, origin
        options = {o.strip() for o in fields.get(b"connection", b"").split(b",")}
        self._keep_alive = (
            b"keep-alive" in options  # HTTP/1.0 closes unless asked not to
            if version == b"HTTP/1.0"
            else b"close" not in options
        )
        self._chunked = b"chunked" in fields.get(b"transfer-encoding", b"")
        length = fields.get(b"content-length")
        self._length = (
            0 if no_body else int(length) if length and length.isdigit() else None
        )
        if not self._chunked and self._length is None:
            self._keep_alive = False  # the body ends when the connection does

    def __iter__(self) -> Iterator[bytes]:
        connection = self._connection
        if connection is None:
            return
        if self._chunked:
            yield from self._chunks(connection)
        else:
            yield from self._sized(connection)
        self._connection = None
        if self._keep_alive and not connection.buffer:  # bytes past the end: garbage
            self._pool._checkin(self._origin, connection)
        else:
            connection.close()

    def _sized(self, connection: _Connection) -> Iterator[bytes]:
        left = self._length
        data, connection.buffer = connection.buffer, b""
        while True:
            if left is not None:
                data, extra = data[:left], data[left:]
                if extra:
                    raise httpx2.RemoteProtocolError("More data than Content-Length")
                left -= len(data)
            connection.body_ended = left == 0
            if data:
                yield data
            if left == 0:
                return
            data = connection.recv(self._timeout)
            if not data:
                if left is None:
                    return
                raise httpx2.RemoteProtocolError("Server disconnected mid-body")

    def _chunks(self, connection: _Connection) -> Iterator[bytes]:
        """Decode chunked framing; yield the data of every chunk a read completed."""
        buffer, connection.buffer = connection.buffer, b""
        pos = 0  # where the next chunk starts in ``buffer``
        while True:
            out: list[bytes] = []
            while (line_end := buffer.find(b"\r\n", pos)) >= 0:
                size = _chunk_size(buffer[pos:line_end])
                if size == 0:  # the last chunk, then trailers up to a blank line
                    trailer_end = buffer.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        break
                    connection.buffer = buffer[trailer_end + 4 :]
                    connection.body_ended = True
                    if out:
                        yield b"".join(out)
                    return
                start = line_end + 2
                end = start + size
                if len(buffer) < end + 2:
                    break  # the rest of this chunk is still on its way
                if buffer[end : end + 2] != b"\r\n":
                    raise httpx2.RemoteProtocolError("Malformed chunk")
                out.append(buffer[start:end])
                pos = end + 2
            if out:
                yield b"".join(out)
            data = connection.recv(self._timeout)
            if not data:
                raise httpx2.RemoteProtocolError("Server disconnected mid-body")
            buffer, pos = buffer[pos:] + data, 0

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:  # not read to its end: unusable for another request
            connection.close()
