"""The non-streaming answers, as bytes and headers, so both apps serve them alike.

The demo page is static HTML with its script and style in files beside it
(``templates/assets/``), never inline: that lets the page carry a Content Security
Policy that runs no inline script at all, a second line of defence behind the
page's rule of inserting model output as text only.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from shared.config import Settings
from shared.streaming import StreamError

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
ASSETS_DIR = TEMPLATES_DIR / "assets"
JSON_CONTENT_TYPE = "application/json"
ASSET_CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}
# Same-origin everything; `data:` only for the page's empty favicon.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Revalidate on every load, so an edited page or script shows at once.
NO_CACHE = "no-cache"

Page = tuple[bytes, dict[str, str]]


@cache
def index_page() -> Page:
    """The demo page: it asks ``/healthz`` which upstream is in use."""
    body = (TEMPLATES_DIR / "index.html").read_bytes()
    return body, {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": PAGE_CSP,
        "Cache-Control": NO_CACHE,
    }


def asset(name: str) -> Page:
    """A file of ``templates/assets/`` by its bare name; 404 for anything else."""
    found = _assets().get(name)
    if found is None:
        raise StreamError(404, f"There is no asset named {name[:40]!r}.", "not_found")
    return found


@cache
def _assets() -> dict[str, Page]:
    """Every servable asset, read once: a fixed list, so no path reaches the disk."""
    return {
        path.name: (
            path.read_bytes(),
            {
                "Content-Type": ASSET_CONTENT_TYPES[path.suffix],
                "Cache-Control": NO_CACHE,
            },
        )
        for path in sorted(ASSETS_DIR.iterdir())
        if path.suffix in ASSET_CONTENT_TYPES
    }


def health_body(settings: Settings) -> bytes:
    return json.dumps({"status": "ok", "upstream": settings.upstream_label}).encode()
