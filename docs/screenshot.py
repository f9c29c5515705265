"""Take ``docs/screenshot.png``: the demo page, as ``make run`` serves it.

Run ``make screenshot``: the Flask app under gunicorn+gevent with the built-in demo
upstream (no key), Debian's Chromium, one question answered with the model's
thinking (opened), two tool calls run by the server with their results, and the
answer.
"""

from __future__ import annotations

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
                box.fill("What time is it in Tokyo? And roll 2 dice, please.")
                box.press("Enter")
                expect(page.locator("#status")).to_have_text("Done.", timeout=30_000)
                page.locator("details.thinking summary").first.click()
                page.screenshot(path=OUTPUT, full_page=True)
                browser.close()
        finally:
            server.stop()
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
