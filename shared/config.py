"""Settings read from the environment once, at start, shared by both apps.

Each default is a named constant that the README's configuration table mirrors.
A bad value stops the server at start with a message naming the variable, rather
than failing on the first request.
"""

from __future__ import annotations

import math
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
# The host names each app answers to (DJANGO_ALLOWED_HOSTS, FLASK_TRUSTED_HOSTS).
DEFAULT_ALLOWED_HOSTS = "127.0.0.1,localhost,[::1]"
CHAT_APIS = ("chat", "responses")
# Sent when OPENAI_BASE_URL names a local server that needs no key.
PLACEHOLDER_API_KEY = "no-key-needed"
# Past these a value is a typo (or nan/inf), not a choice.
MAX_SECONDS = 86_400  # a day
MAX_CHARS_OR_TOKENS = 100_000_000  # far past any model's context window
MAX_BODY_BYTES = 1_073_741_824  # 1 GiB
MAX_RETRIES = 100
# Their values go into HTTP headers: the openai SDK sends the last two when set.
HEADER_VALUED = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "STREAM_AUTH_TOKEN",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
)

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
        for name in HEADER_VALUED:
            check_header_value(name, environ.get(name) or "")
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
                environ,
                "STREAM_KEEPALIVE_SECONDS",
                DEFAULT_KEEPALIVE_SECONDS,
                float,
                MAX_SECONDS,
            ),
            max_prompt_chars=_positive(
                environ,
                "STREAM_MAX_PROMPT_CHARS",
                DEFAULT_MAX_PROMPT_CHARS,
                int,
                MAX_CHARS_OR_TOKENS,
            ),
            upstream_timeout_seconds=_positive(
                environ,
                "STREAM_UPSTREAM_TIMEOUT_SECONDS",
                DEFAULT_UPSTREAM_TIMEOUT_SECONDS,
                float,
                MAX_SECONDS,
            ),
            cors_origins=frozenset(
                origin.rstrip("/")
                for origin in comma_list(environ, "STREAM_CORS_ORIGINS")
            ),
            upstream_max_retries=_count(
                environ, "STREAM_UPSTREAM_MAX_RETRIES", DEFAULT_UPSTREAM_MAX_RETRIES
            ),
            max_body_bytes=_positive(
                environ,
                "STREAM_MAX_BODY_BYTES",
                DEFAULT_MAX_BODY_BYTES,
                int,
                MAX_BODY_BYTES,
            ),
            auth_token=environ.get("STREAM_AUTH_TOKEN") or None,
            rate_limit=rate_limit,
            redis_url=environ.get("REDIS_URL") or None,
            max_output_tokens=_positive(
                environ, "STREAM_MAX_OUTPUT_TOKENS", None, int, MAX_CHARS_OR_TOKENS
            ),
        )


def comma_list(environ: Mapping[str, str], name: str, default: str = "") -> list[str]:
    """The items of a comma-separated variable, each trimmed, empty ones dropped.

    ``"a.example, b.example,"`` is ``["a.example", "b.example"]``: a space after a
    comma is easy to type and invisible in a log, and kept it would never match.
    An unset or empty variable gives the items of ``default``.
    """
    raw = environ.get(name) or default
    return [item.strip() for item in raw.split(",") if item.strip()]


def check_header_value(name: str, value: str) -> None:
    """Refuse a value that can't be sent as an HTTP header value as it is.

    A secret made from a file (``kubectl create secret --from-file``) often ends
    with a newline: sent on, it ends the header block early, or makes the HTTP
    client refuse every request. The message gives the position, never the value:
    it may be a secret.
    """
    for index, char in enumerate(value):
        if not (char.isascii() and char.isprintable()):
            where = "at its end" if index == len(value) - 1 else f"at index {index}"
            raise ValueError(
                f"{name} holds {char!r} {where}, which can't go in an HTTP header: "
                "remove it (a file-made secret often ends with a newline). "
                "The value is not shown."
            )
    if value != value.strip():
        raise ValueError(
            f"{name} starts or ends with a space: remove it. The value is not shown."
        )


def _count(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    digits = raw.strip()
    # isascii: "²".isdigit() is true too, and int() refuses it; the length check
    # comes before int(), which refuses more than 4,300 digits.
    short = len(digits) <= len(str(MAX_RETRIES))
    whole = digits.isascii() and digits.isdigit() and short
    if not whole or int(digits) > MAX_RETRIES:
        raise ValueError(
            f"{name} must be a whole number from 0 to {MAX_RETRIES}, got {_quoted(raw)}"
        )
    return int(digits)


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
    environ: Mapping[str, str],
    name: str,
    default: _N,
    kind: type[_N],
    maximum: int,
) -> _N: ...
@overload
def _positive(
    environ: Mapping[str, str],
    name: str,
    default: None,
    kind: type[_N],
    maximum: int,
) -> _N | None: ...
def _positive(
    environ: Mapping[str, str],
    name: str,
    default: _N | None,
    kind: type[_N],
    maximum: int,
) -> _N | None:
    """A number above 0 and at most ``maximum``; nan and inf are refused.

    ``nan`` passes any comparison test written as "refuse if <= 0": a keep-alive
    interval of nan wrote keep-alives in a tight loop, and inf broke every stream.
    """
    raw = environ.get(name)
    if not raw:
        return default
    number = "whole number" if kind is int else "number"
    problem = ValueError(
        f"{name} must be a {number} above 0 and at most {maximum}, got {_quoted(raw)}"
    )
    try:
        value = kind(raw)
    except ValueError:
        raise problem from None
    if not (math.isfinite(value) and 0 < value <= maximum):
        raise problem
    return value


def _quoted(raw: str) -> str:
    """A bad value for a message, cut short: a pasted file can be long."""
    text = repr(raw)
    return text if len(text) <= 40 else text[:39] + "…"
