"""The two non-streaming answers, as bytes, so both apps serve them byte for byte."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from shared.config import Settings

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"


@cache
def index_page() -> bytes:
    """The demo page: static HTML that asks ``/healthz`` which upstream is in use."""
    return (TEMPLATES_DIR / "index.html").read_bytes()


def health_body(settings: Settings) -> bytes:
    return json.dumps({"status": "ok", "upstream": settings.upstream_label}).encode()
