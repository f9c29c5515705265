"""The Flask reference app: ``create_app()`` mounts the streaming blueprint."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from flask_app.errors import framework_error, json_error
from flask_app.views import bp
from shared.config import DEFAULT_ALLOWED_HOSTS, Settings
from shared.guard import (
    MAX_QUERY_FIELDS,
    SECURITY_HEADERS,
    Authorize,
    Guard,
    check_host,
    refuse_too_many_fields,
)
from shared.resumable import answers_for
from shared.streaming import StreamError, comma_list
from shared.tools import ToolSpec, tools_for
from shared.upstream import Upstream


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    authorize: Authorize | None = None,
    tools: Iterable[ToolSpec] | None = None,
) -> Flask:
    """Build the app from the environment, then ``test_config`` (Flask config keys).

    ``STREAM_SETTINGS`` (a ``shared.config.Settings``) in ``test_config`` replaces
    the environment's settings, which are then not read at all. ``authorize(request)``
    may refuse a streaming request (401) before it spends the key, e.g.
    ``lambda request: "user_id" in session`` or Flask-Login's
    ``lambda request: current_user.is_authenticated``. ``tools`` (functions, or
    their dotted paths) replace ``STREAM_TOOLS``: what the model may call.
    """
    app = Flask(__name__)
    test_config = test_config or {}
    if "STREAM_SETTINGS" not in test_config:
        app.config.from_mapping(STREAM_SETTINGS=Settings.from_env_or_exit())
    # Host names it answers to, as Django's ALLOWED_HOSTS (see shared.guard).
    hosts = comma_list(os.environ, "FLASK_TRUSTED_HOSTS", DEFAULT_ALLOWED_HOSTS)
    app.config.from_mapping(ALLOWED_HOSTS=hosts)
    app.config.from_mapping(test_config)
    settings = app.config["STREAM_SETTINGS"]
    app.extensions["upstream"] = Upstream(settings, tools_for(settings, tools))
    app.extensions["stream_guard"] = Guard(settings, authorize)
    app.extensions["answers"] = answers_for(settings)
    app.before_request(_refuse_unknown_host)
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, framework_error)
    app.after_request(_add_security_headers)
    app.wsgi_app = refuse_too_many_fields(  # type: ignore[method-assign]
        app.wsgi_app, MAX_QUERY_FIELDS
    )
    return app


def _refuse_unknown_host() -> Response | None:
    """A host outside ``FLASK_TRUSTED_HOSTS`` gets 400, as Django's ALLOWED_HOSTS."""
    try:
        check_host(request.environ, current_app.config["ALLOWED_HOSTS"])
    except StreamError as error:
        return json_error(error)
    return None


def _add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Werkzeug upper-cases reason phrases; use the standard ones, as Django does.
    response.status = (
        f"{response.status_code} {HTTPStatus(response.status_code).phrase}"
    )
    return response
