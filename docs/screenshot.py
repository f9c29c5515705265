"""Take ``docs/screenshot.png``: the demo page mid-stream, as ``make run`` serves it.

Run ``make screenshot``: the Flask app under gunicorn+gevent with the built-in demo
upstream (no key), Debian's Chromium, one answered question and a second answer
caught while it streams.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.chromium import launch  # noqa: E402
from tests.servers import FLASK_GUNICORN, Server  # noqa: E402

OUTPUT = ROOT / "docs" / "screenshot.png"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(FLASK_GUNICORN, {}, Path(tmp) / "server.log").start()
        try:
            with sync_playwright() as playwright:
                browser = launch(playwright)
                page = browser.new_page(viewport={"width": 820, "height": 760})
                page.goto(f"http://127.0.0.1:{server.port}/")
                box = page.get_by_role("textbox", name="Message")
                box.fill("What is streaming?")
                box.press("Enter")
                expect(page.locator("#status")).to_have_text("Done.", timeout=30_000)
                box.fill("Say it as a haiku, please.")
                box.press("Enter")
                answer = page.locator("#conversation li.assistant .text").last
                expect(answer).to_have_text(re.compile(r"[\s\S]{60,}"), timeout=30_000)
                page.screenshot(path=OUTPUT, full_page=True)
                browser.close()
        finally:
            server.stop()
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
