"""Checks for ``STREAM_AUTHORIZE``: who may spend the key, the Django way."""

from __future__ import annotations

from django.http import HttpRequest


def signed_in(request: HttpRequest) -> bool:
    """Only users signed in to this site, as ``login_required`` would require.

    Not ``login_required`` itself: it redirects to a login page, which a ``fetch``
    or an ``EventSource`` would follow and then read as a broken stream. A 401 with
    the contract's JSON error says what happened.
    """
    return bool(request.user.is_authenticated)
