"""Settings read from the environment once, at start, shared by both apps.

Each default is a named constant that the README's configuration table mirrors.
A bad value stops the server at start with a message naming the variable, rather
than failing on the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar, overload

from shared.streaming import DEFAULT_KEEPALIVE_SECONDS

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_COMPLETION_MODEL = "gpt-3.5-turbo-instruct"
DEFAULT_CHAT_API = "chat"
DEFAULT_MAX_PROMPT_CHARS = 32_000
DEFAULT_UPSTREAM_TIMEOUT_SECONDS = 60.0
DEFAULT_UPSTREAM_MAX_RETRIES = 2  # the openai SDK's own default
# A request body holds at most the prompt: 1 MiB leaves room for JSON escapes.
DEFAULT_MAX_BODY_BYTES = 1_048_576
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
    upstream_max_retries: int = DEFAULT_UPSTREAM_MAX_RETRIES
    cors_origins: frozenset[str] = frozenset()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # Each of these is off when unset.
    auth_token: str | None = field(default=None, repr=False)
    rate_limit: str | None = None  # e.g. "20/minute", per client address
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    max_output_tokens: int | None = None

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
        rate_limit = environ.get("STREAM_RATE_LIMIT") or None
        if rate_limit is not None:
            _check_rate_limit(rate_limit)
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
            upstream_max_retries=_count(
                environ, "STREAM_UPSTREAM_MAX_RETRIES", DEFAULT_UPSTREAM_MAX_RETRIES
            ),
            max_body_bytes=_positive(
                environ, "STREAM_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int
            ),
            auth_token=environ.get("STREAM_AUTH_TOKEN") or None,
            rate_limit=rate_limit,
            redis_url=environ.get("REDIS_URL") or None,
            max_output_tokens=_positive(environ, "STREAM_MAX_OUTPUT_TOKENS", None, int),
        )


def _count(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    if not raw.strip().isdigit():
        raise ValueError(f"{name} must be a whole number, 0 or more, got {raw!r}")
    return int(raw)


def _check_rate_limit(value: str) -> None:
    from limits import parse_many  # the rate limiter's own syntax

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(
            "STREAM_RATE_LIMIT must look like '20/minute' or '5/second;100/hour', "
            f"got {value!r}"
        ) from None


@overload
def _positive(
    environ: Mapping[str, str], name: str, default: _N, kind: type[_N]
) -> _N: ...
@overload
def _positive(
    environ: Mapping[str, str], name: str, default: None, kind: type[_N]
) -> _N | None: ...
def _positive(
    environ: Mapping[str, str], name: str, default: _N | None, kind: type[_N]
) -> _N | None:
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
