"""``manage.py runserver``, whose streamed bodies are chunked, as every other server's.

Django's development server (``wsgiref``) sends a body of unknown length as is and
ends it by closing the connection: a raw text answer whose upstream failed midway
then ends exactly as a whole one does, and the client can't tell it was cut short.
Here an HTTP/1.1 response without ``Content-Length`` is sent with
``Transfer-Encoding: chunked`` (wsgiref leaves that as a "XXX" in
``set_content_length``), so that a failure after the first byte leaves the body
without its last chunk: an error for every HTTP client, as under ``flask run`` and
gunicorn. The command line is Django's own (staticfiles' ``runserver``, which this
project's ``INSTALLED_APPS`` would otherwise pick).
"""

from __future__ import annotations

from typing import Any, cast
from wsgiref.headers import Headers

from django.contrib.staticfiles.management.commands import runserver
from django.core.servers import basehttp

# Statuses whose responses have no body (RFC 9110), so no chunks either.
_NO_BODY = ("1", "204", "304")


class ChunkedServerHandler(basehttp.ServerHandler):
    """Django's handler, sending a body of unknown length in chunks."""

    # Set by wsgiref and Django (typeshed leaves them out).
    environ: dict[str, str]
    headers: Headers
    status: str | None
    request_handler: basehttp.WSGIRequestHandler
    chunked = False

    def set_content_length(self) -> None:
        super().set_content_length()
        if "Content-Length" not in self.headers and self._may_chunk():
            self.headers["Transfer-Encoding"] = "chunked"

    def _may_chunk(self) -> bool:
        return (
            self.environ["SERVER_PROTOCOL"] == "HTTP/1.1"
            and self.environ["REQUEST_METHOD"] != "HEAD"
            and not str(self.status).startswith(_NO_BODY)
        )

    def send_headers(self) -> None:
        super().send_headers()
        self.chunked = self.headers.get("Transfer-Encoding") == "chunked"

    def _write(self, data: bytes) -> None:
        if self.chunked and data:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        super()._write(data)

    def finish_content(self) -> None:
        super().finish_content()
        if self.chunked:
            self.chunked = False  # the last chunk goes out as is
            self._write(b"0\r\n\r\n")


class ChunkedRequestHandler(basehttp.WSGIRequestHandler):
    """Django's request handler, with :class:`ChunkedServerHandler`."""

    def handle_one_request(self) -> None:
        # Django's own, but for the handler class.
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = ChunkedServerHandler(
            self.rfile, self.wfile, self.get_stderr(), self.get_environ()
        )
        handler.request_handler = self
        app = cast(basehttp.WSGIServer, self.server).get_app()
        assert app is not None  # set by basehttp.run() before it serves
        handler.run(app)


class ChunkedWSGIServer(basehttp.WSGIServer):
    """Django's development server, with :class:`ChunkedRequestHandler`."""

    def __init__(self, address: Any, handler: Any, *args: Any, **kw: Any) -> None:
        # basehttp.run() passes its own handler class: there is no other way in.
        super().__init__(address, ChunkedRequestHandler, *args, **kw)


class Command(runserver.Command):
    """Django's ``runserver`` (with static files), serving through the classes above."""

    server_cls = ChunkedWSGIServer
