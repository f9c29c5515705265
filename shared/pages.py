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

ROOT_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = ROOT_DIR / "templates"
# The useChat example page, built from chat_ui/ by `make chat-ui`.
USE_CHAT_DIR = ROOT_DIR / "chat_ui" / "dist"
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


def use_chat_file(name: str = "index.html") -> Page:
    """A file of the built ``useChat`` example by its bare name; 404 otherwise.

    Read on each request, so that a page built after the server started is served.
    """
    types = {**ASSET_CONTENT_TYPES, ".html": "text/html; charset=utf-8"}
    built = USE_CHAT_DIR.iterdir() if USE_CHAT_DIR.is_dir() else ()
    path = next((p for p in built if p.name == name and p.suffix in types), None)
    if path is None:
        raise StreamError(
            404,
            f"The useChat example has no file {name[:40]!r}: build it with "
            "`make chat-ui`.",
            "not_found",
        )
    headers = {"Content-Type": types[path.suffix], "Cache-Control": NO_CACHE}
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = PAGE_CSP
    return path.read_bytes(), headers


def health_body(settings: Settings) -> bytes:
    return json.dumps({"status": "ok", "upstream": settings.upstream_label}).encode()
