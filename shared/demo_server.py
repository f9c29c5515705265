"""The offline demo model as an OpenAI-compatible HTTP server on 127.0.0.1.

``python -m shared.demo_server [--port 8001] [--token-delay S] [--silence S]``, then
``OPENAI_BASE_URL=http://127.0.0.1:8001/v1`` and any ``OPENAI_API_KEY``: a copied
view, a front end under development or any OpenAI client gets the demo's answers
without a key, a bill or a network. Choices a reader might want to "fix":

- ``DemoTransport`` answers every request, so the text, the events and the error
  bodies are exactly the in-process demo's. Only the pacing is done here, not by
  ``DemoStream``: its ``time.sleep`` can't be interrupted, and every wait must watch
  the socket to notice at once a client that leaves (a ``poll`` and a ``MSG_PEEK``
  for the end of its stream, which a pipelined request's bytes don't look like).
- One chunk per SSE event, written unbuffered (``wbufsize`` is 0) with
  ``TCP_NODELAY``: each token reaches the client when it is produced.
- Any ``Authorization`` is accepted, as by a local Ollama or vLLM; none is logged.
- The stdlib's threaded server, daemon threads: an open stream never holds up the
  exit, and no gevent, so this process behaves the same under any test runner.
- The log (stderr, one flushed line each) is an interface: tests count the requests
  and the ``answer ended: ...`` lines, so their wording is kept as is.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import select
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import FrameType
from typing import Any

import httpx2

from shared.demo import DemoTransport

__all__ = ["DemoServer", "main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001
DEFAULT_TOKEN_DELAY_SECONDS = 0.02  # the in-process demo's pace
IDLE_TIMEOUT_SECONDS = 60.0  # an idle keep-alive, or a client that stopped reading
_FRAMING_HEADERS = {"content-length", "transfer-encoding", "connection"}
# As the stdlib's own access log does: a request line can't write a fake log line.
_CONTROL_CHARACTERS = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}

log = logging.getLogger("demo_upstream")


class DemoServer(ThreadingHTTPServer):
    """Serve the demo model on ``address``; pace and silence its streamed answers."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], token_delay: float, silence: float
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.transport = DemoTransport(token_delay=0)  # paced by the handler
        self.token_delay, self.silence = token_delay, silence
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # HTTPServer's would look the host name up
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def origin(self) -> str:
        """``http://HOST:PORT`` with the port bound (``--port 0`` picks one)."""
        host = f"[{self.server_name}]" if ":" in self.server_name else self.server_name
        return f"http://{host}:{self.server_port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets its connection is no error; anything else is."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """One keep-alive connection: ``DemoTransport`` answers each of its requests."""

    protocol_version = "HTTP/1.1"
    server_version = "demo-upstream"
    timeout = IDLE_TIMEOUT_SECONDS
    server: DemoServer
    _watching: bool  # False once a pipelined request's bytes hide the client's end

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()

    def do_POST(self) -> None:
        """Hand the request to ``DemoTransport`` and write its response back."""
        body = self._read_body()
        request = httpx2.Request(
            self.command,
            self.server.origin + _as_path(self.path),
            headers=[  # as received: http.server decoded them as latin-1
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in self.headers.items()
            ],
            content=body or b"",
        )
        response = self.server.transport.handle_request(request)
        self._send_head(response, keep_alive=body is not None)
        if "content-length" in response.headers:
            self.wfile.write(response.read())
        else:
            self._stream(response)

    # Other routes and methods get the transport's 404, as from OpenAI.
    do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_POST

    def _read_body(self) -> bytes | None:
        """The body; ``None`` if it is not framed by a ``Content-Length``, which
        leaves its bytes unread: the connection must end after this answer."""
        length = (self.headers.get("Content-Length") or "0").strip()
        if "Transfer-Encoding" in self.headers or not length.isdigit():
            return None
        return self.rfile.read(int(length))

    def _send_head(self, response: httpx2.Response, keep_alive: bool) -> None:
        """The status line and the transport's headers, framed for this wire."""
        self.send_response(response.status_code)
        for name, value in response.headers.multi_items():
            if name.lower() not in _FRAMING_HEADERS:
                self.send_header(name, value)
        if "content-length" in response.headers:
            self.send_header("Content-Length", response.headers["content-length"])
        else:
            self.send_header("Transfer-Encoding", "chunked")
        if not keep_alive:
            self.send_header("Connection", "close")
        self.end_headers()

    def _stream(self, response: httpx2.Response) -> None:
        """One chunk per SSE event, after ``--silence`` for the first and
        ``--token-delay`` for each next one; stop as soon as the client leaves."""
        sent, pause, outcome = 0, self.server.silence, "client left"
        self._watching = True
        try:
            for event in response.iter_raw():
                if self._client_left(pause):
                    break
                self._write_chunk(event)
                sent, pause = sent + 1, self.server.token_delay
            else:
                self._write_chunk(b"")  # the last chunk: the body ends here
                outcome = "finished"
        except OSError:
            pass  # the client is gone: a reset, or a write that timed out
        finally:
            response.close()  # closes the DemoStream
        if outcome != "finished":
            self.close_connection = True
        log.info("answer ended: %s after %d events", outcome, sent)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_left(self, seconds: float) -> bool:
        """Wait ``seconds``, or return True as soon as the client closes its end."""
        deadline = time.monotonic() + seconds
        if self._watching:
            poller = select.poll()  # not select(): it fails on descriptors >= 1024
            poller.register(self.connection, select.POLLIN)
            if poller.poll(seconds * 1000):
                try:
                    data = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    return True
                if not data:
                    return True
                self._watching = False
        time.sleep(max(0.0, deadline - time.monotonic()))
        return False

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if not self.command:  # a request line that could not be parsed
            self.log_message('"-" %s', code)
            return
        path = self.path.split("?")[0]  # a query may carry a key
        self.log_message('"%s %s" %s', self.command, path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s", (format % args).translate(_CONTROL_CHARACTERS))


def _as_path(target: str) -> str:
    """The request target as a URL path that ``httpx2`` accepts, whatever the client
    sent (``*``, a control character): the transport answers it with its 404."""
    path = target if target.startswith("/") else f"/{target}"
    return urllib.parse.quote(path, safe="/%?&=+:;,@!$'()*[]~#")


def _seconds(value: str) -> float:
    """An argparse type: a finite number of seconds, zero or more."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}")
    return seconds


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m shared.demo_server",
        description="Serve the offline demo model as an OpenAI-compatible API.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="default: %(default)s")
    parser.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="serve on a --host other machines can reach (it answers anyone)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free")
    parser.add_argument(
        "--token-delay",
        type=_seconds,
        default=DEFAULT_TOKEN_DELAY_SECONDS,
        metavar="SECONDS",
        help="between two events of a streamed answer (default: %(default)s)",
    )
    parser.add_argument(
        "--silence",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="after the headers, before the first event, as a model that thinks",
    )
    args = parser.parse_args(argv)
    if not (_is_loopback(args.host) or args.allow_non_loopback):
        parser.error(
            f"--host {args.host!r} is not a loopback address, and the demo upstream "
            "answers anyone who reaches it: use 127.0.0.1, or add "
            "--allow-non-loopback if that is what you want."
        )
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then exit 0."""
    args = _arguments(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr
    )
    try:
        server = DemoServer((args.host, args.port), args.token_delay, args.silence)
    except OSError as error:
        sys.exit(
            f"Cannot listen on {args.host!r} port {args.port}: {error.strerror}. "
            "Pick another --port (or --port 0 for any free one)."
        )
    stopped_by: list[str] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        # serve_forever() returns at its next poll. Not an exception raised here:
        # it would come out of whatever the main thread was doing, a lock held.
        stopped_by.append(signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with server:
        log.info(
            "Demo upstream on %s/v1: set OPENAI_BASE_URL to that and "
            "OPENAI_API_KEY to any value.",
            server.origin,
        )
        server.serve_forever()
        log.info("Demo upstream stopped (%s).", ", ".join(stopped_by))


if __name__ == "__main__":
    main()
