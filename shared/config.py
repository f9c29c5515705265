"""Settings read from the environment once, at start, shared by both apps.

Each default is a named constant that the README's configuration table mirrors.
A bad value stops the server at start with a message naming the variable, rather
than failing on the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from shared.streaming import DEFAULT_KEEPALIVE_SECONDS

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_COMPLETION_MODEL = "gpt-3.5-turbo-instruct"
DEFAULT_CHAT_API = "chat"
DEFAULT_MAX_PROMPT_CHARS = 32_000
DEFAULT_UPSTREAM_TIMEOUT_SECONDS = 60.0
CHAT_APIS = ("chat", "responses")
# Sent when OPENAI_BASE_URL names a local server that needs no key.
PLACEHOLDER_API_KEY = "no-key-needed"

_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Settings:
    """What the apps need to know; ``api_key`` never appears in ``repr``."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    model: str = DEFAULT_MODEL
    completion_model: str = DEFAULT_COMPLETION_MODEL
    chat_api: str = DEFAULT_CHAT_API
    keepalive_seconds: float = DEFAULT_KEEPALIVE_SECONDS
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    upstream_timeout_seconds: float = DEFAULT_UPSTREAM_TIMEOUT_SECONDS
    cors_origins: frozenset[str] = frozenset()

    @property
    def uses_demo(self) -> bool:
        """With neither a key nor a base URL, the built-in demo model answers."""
        return not self.api_key and not self.base_url

    @property
    def upstream_label(self) -> str:
        return "demo" if self.uses_demo else "openai-compatible"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read the contract's variables; raise ``ValueError`` naming a bad one."""
        chat_api = environ.get("OPENAI_CHAT_API", DEFAULT_CHAT_API)
        if chat_api not in CHAT_APIS:
            raise ValueError(
                f"OPENAI_CHAT_API must be one of {CHAT_APIS}, got {chat_api!r}"
            )
        origins = environ.get("STREAM_CORS_ORIGINS", "")
        return cls(
            api_key=environ.get("OPENAI_API_KEY") or None,
            base_url=environ.get("OPENAI_BASE_URL") or None,
            model=environ.get("OPENAI_MODEL") or DEFAULT_MODEL,
            completion_model=environ.get("OPENAI_COMPLETION_MODEL")
            or DEFAULT_COMPLETION_MODEL,
            chat_api=chat_api,
            keepalive_seconds=_positive(
                environ, "STREAM_KEEPALIVE_SECONDS", DEFAULT_KEEPALIVE_SECONDS, float
            ),
            max_prompt_chars=_positive(
                environ, "STREAM_MAX_PROMPT_CHARS", DEFAULT_MAX_PROMPT_CHARS, int
            ),
            upstream_timeout_seconds=_positive(
                environ,
                "STREAM_UPSTREAM_TIMEOUT_SECONDS",
                DEFAULT_UPSTREAM_TIMEOUT_SECONDS,
                float,
            ),
            cors_origins=frozenset(
                o.strip().rstrip("/") for o in origins.split(",") if o.strip()
            ),
        )


def _positive(environ: Mapping[str, str], name: str, default: _N, kind: type[_N]) -> _N:
    raw = environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive number, got {raw!r}")
    return value
