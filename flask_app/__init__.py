"""The Flask reference app: ``create_app()`` mounts the streaming blueprint."""

from __future__ import annotations

import os
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from flask import Flask, Response

from flask_app.views import bp
from shared.config import DEFAULT_ALLOWED_HOSTS, Settings, comma_list
from shared.guard import (
    MAX_QUERY_FIELDS,
    SECURITY_HEADERS,
    Authorize,
    Guard,
    refuse_too_many_fields,
)
from shared.upstream import Upstream


def create_app(
    config: Mapping[str, Any] | None = None, *, authorize: Authorize | None = None
) -> Flask:
    """Build the app; settings come from the environment unless ``config`` has them.

    ``authorize(request)`` may refuse a streaming request (401) before it spends the
    key, e.g. ``lambda request: "user_id" in session`` or Flask-Login's
    ``lambda request: current_user.is_authenticated``.
    """
    app = Flask(__name__)
    settings = (config or {}).get("STREAM_SETTINGS") or Settings.from_env()
    app.config["STREAM_SETTINGS"] = settings
    # Host names it answers to, as Django's ALLOWED_HOSTS (see shared.guard).
    app.config["ALLOWED_HOSTS"] = comma_list(
        os.environ, "FLASK_TRUSTED_HOSTS", DEFAULT_ALLOWED_HOSTS
    )
    app.extensions["upstream"] = Upstream(settings)
    app.extensions["stream_guard"] = Guard(settings, authorize)
    app.register_blueprint(bp)
    app.after_request(_add_security_headers)
    app.wsgi_app = refuse_too_many_fields(  # type: ignore[method-assign]
        app.wsgi_app, MAX_QUERY_FIELDS
    )
    return app


def _add_security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Werkzeug upper-cases reason phrases; use the standard ones, as Django does.
    response.status = (
        f"{response.status_code} {HTTPStatus(response.status_code).phrase}"
    )
    return response
