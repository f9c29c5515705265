"""Debian's Chromium under Playwright: the browser of the page tests and screenshot.

Playwright's own browser download can't run here, so it drives ``/usr/bin/chromium``
(``make test`` installs it with apt-get).
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Playwright

CHROMIUM = Path("/usr/bin/chromium")
# Headless Chromium as root on a machine whose network is closed: without these it
# keeps trying Google's hosts in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch(playwright: Playwright) -> Browser:
    """Start headless Chromium; a clear error if it isn't installed."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs it (apt-get).")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


class WatchedPage:
    """A page, with what it logged: console errors and dialogs (none expected)."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.console_errors.append(str(error)))
        page.on("dialog", self._dialog)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()
