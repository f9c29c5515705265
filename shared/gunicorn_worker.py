"""gunicorn's gevent worker, answering gunicorn's own errors with the contract's JSON.

gunicorn refuses some requests before any app sees them: a request line over
``limit_request_line`` (``414``: a long ``?prompt=``), too many or too large headers
(``431``), a malformed request line or header (``400``). It answers with an HTML
page of its own; clients of this API expect ``{"error": {"message", "type"}}``.
gunicorn still decides the status and logs as it always does: only the body of its
answer changes. ``gunicorn.conf.py`` names this worker.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.workers.ggevent import GeventWorker

from shared.guard import SECURITY_HEADERS, http_error
from shared.streaming import StreamError

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")


class JsonErrorGeventWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker; its own error pages are the contract's JSON."""

    def handle_error(
        self, req: Any, client: Any, addr: Any, exc: BaseException
    ) -> None:
        page = _ErrorPage()
        super().handle_error(req, page, addr, exc)  # gunicorn's status and logging
        answer = _STATUS_LINE.match(page.data)
        if answer is None:  # gunicorn wrote nothing: nothing to translate
            return
        status, reason = int(answer[1]), answer[2].decode("latin-1")
        error = self._error(status)
        headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(error.body())),
            "Connection": "close",
            **SECURITY_HEADERS,
        }
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()
        )
        try:
            client.sendall(head.encode("latin-1") + b"\r\n" + error.body())
        except OSError:
            self.log.debug("The client left before its error answer was sent.")

    def _error(self, status: int) -> StreamError:
        if status == 414:
            return StreamError(
                414,
                f"The request line is longer than this server takes "
                f"({self.cfg.limit_request_line} bytes); send a long prompt in the "
                "body of POST /completions/chat.",
                "uri_too_long",
            )
        if status == 431:
            return StreamError(
                431,
                "The request's headers are too many or too large.",
                "request_header_fields_too_large",
            )
        return http_error(status)


class _ErrorPage:
    """Takes the place of the client's socket while gunicorn writes its HTML page."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0  # already non-blocking: gunicorn writes at once

    def sendall(self, data: bytes) -> None:
        self.data += data
