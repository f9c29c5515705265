"""Settings read from the environment once, at start, shared by both apps.

Each default is a named constant that the README's configuration table mirrors.
A bad value stops the server at start with a message naming the variable, rather
than failing on the first request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Self

from shared.streaming import MAX_SECONDS, StreamSettings, comma_list, positive_setting

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_COMPLETION_MODEL = "gpt-3.5-turbo-instruct"
DEFAULT_CHAT_API = "chat"
# The host names each app answers to (DJANGO_ALLOWED_HOSTS, FLASK_TRUSTED_HOSTS).
DEFAULT_ALLOWED_HOSTS = "127.0.0.1,localhost,[::1]"
CHAT_APIS = ("chat", "responses")
# Resumable answers (STREAM_RESUMABLE=1): unread this long, an answer is stopped;
# ended, its log is kept this long.
DEFAULT_RESUME_ABANDON_SECONDS = 30.0
DEFAULT_RESUME_TTL_SECONDS = 600.0
SWITCH_VALUES = {"": False, "0": False, "1": True}
# Sent when OPENAI_BASE_URL names a local server that needs no key.
PLACEHOLDER_API_KEY = "no-key-needed"
# Their values go into HTTP headers: the openai SDK sends the last two when set.
HEADER_VALUED = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "STREAM_AUTH_TOKEN",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
)


@dataclass(frozen=True)
class Settings(StreamSettings):
    """What the apps need to know; ``api_key`` never appears in ``repr``.

    The ``STREAM_*`` settings a copied view reads too are :class:`StreamSettings`'s.
    """

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    model: str = DEFAULT_MODEL
    completion_model: str = DEFAULT_COMPLETION_MODEL
    chat_api: str = DEFAULT_CHAT_API
    # Each of these is off when unset.
    auth_token: str | None = field(default=None, repr=False)
    rate_limit: str | None = None  # e.g. "20/minute", per client address
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    tools: tuple[str, ...] = ()  # dotted paths of the functions the model may call
    resumable: bool = False
    resume_abandon_seconds: float = DEFAULT_RESUME_ABANDON_SECONDS
    resume_ttl_seconds: float = DEFAULT_RESUME_TTL_SECONDS

    @property
    def uses_demo(self) -> bool:
        """With neither a key nor a base URL, the built-in demo model answers."""
        return not self.api_key and not self.base_url

    @property
    def upstream_label(self) -> str:
        return "demo" if self.uses_demo else "openai-compatible"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Self:
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
        resumable = environ.get("STREAM_RESUMABLE", "")
        if resumable not in SWITCH_VALUES:
            raise ValueError(f"STREAM_RESUMABLE must be 1 or 0, got {resumable!r}")
        streaming = StreamSettings.from_env(environ)
        return cls(
            **{item.name: getattr(streaming, item.name) for item in fields(streaming)},
            api_key=environ.get("OPENAI_API_KEY") or None,
            base_url=environ.get("OPENAI_BASE_URL") or None,
            model=environ.get("OPENAI_MODEL") or DEFAULT_MODEL,
            completion_model=environ.get("OPENAI_COMPLETION_MODEL")
            or DEFAULT_COMPLETION_MODEL,
            chat_api=chat_api,
            auth_token=environ.get("STREAM_AUTH_TOKEN") or None,
            rate_limit=rate_limit,
            redis_url=environ.get("REDIS_URL") or None,
            tools=tuple(comma_list(environ, "STREAM_TOOLS")),
            resumable=SWITCH_VALUES[resumable],
            resume_abandon_seconds=positive_setting(
                environ,
                "STREAM_RESUME_ABANDON_SECONDS",
                DEFAULT_RESUME_ABANDON_SECONDS,
                float,
                MAX_SECONDS,
            ),
            resume_ttl_seconds=positive_setting(
                environ,
                "STREAM_RESUME_TTL_SECONDS",
                DEFAULT_RESUME_TTL_SECONDS,
                float,
                MAX_SECONDS,
            ),
        )


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


def _check_rate_limit(value: str) -> None:
    from limits import parse_many  # the rate limiter's own syntax

    try:
        parse_many(value)
    except ValueError:
        raise ValueError(
            "STREAM_RATE_LIMIT must look like '20/minute' or '5/second;100/hour', "
            f"got {value!r}"
        ) from None
