"""``DJANGO_STREAM_AUTHORIZE`` hooks for tests that need a server-side failure."""

from __future__ import annotations

import os

import openai
from django.http import HttpRequest


def fail_holding_the_key(request: HttpRequest) -> bool:
    """Fail inside the openai SDK, with the key in its frames' local variables."""
    api_key = os.environ["OPENAI_API_KEY"]
    openai.OpenAI(api_key=api_key, base_url="http://127.0.0.1:no-port/v1")
    return True
