"""The openai client of one server process, and the calls the routes make with it.

The client is created on first use, not at import: under gunicorn that is inside the
worker, after gevent has patched ``socket`` and ``ssl``. A client (and its SSL
context) made before the patch fails every HTTPS request under gevent
(``TypeError: super(type, obj)`` in ``ssl.wrap_socket``), and a connection pool made
before ``fork`` would be shared by every worker.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import openai
from openai._models import FinalRequestOptions

from shared.config import PLACEHOLDER_API_KEY, Settings
from shared.demo import DEMO_BASE_URL, DemoTransport
from shared.streaming import (
    FollowUp,
    Opener,
    Step,
    Tools,
    register_secret,
    responses_input,
)
from shared.transport import LeanTransport

log = logging.getLogger(__name__)

# Chat Completions messages, as ``shared.validation`` checks them: text, assistant
# ``tool_calls`` and ``tool`` answers.
Messages = Sequence[Mapping[str, Any]]
# The options of every stream's request but its path and body, as ``create()`` sets
# them: a POST that carries the API key.
_POST = FinalRequestOptions.construct(
    method="post", url="", security={"bearer_auth": True}
)


@dataclass(frozen=True)
class Answer:
    """What a route streams: the first model call's request, and with tools the
    next ones' (the keyword arguments of ``sse_frames`` and ``text_stream``)."""

    opener: Opener
    tools: Tools | None = None
    follow_up: FollowUp | None = None


class Upstream:
    """The requests of streamed completions for the routes, per the settings.

    Each call returns an :data:`~shared.streaming.Opener`, not an opened stream: the
    relay sends the request itself, so that its keep-alive clock starts with the
    client's request even when the upstream is slow to answer, and a client that
    leaves meanwhile cancels the request.
    """

    def __init__(self, settings: Settings, tools: Tools | None = None) -> None:
        self.settings = settings
        self.tools = tools or Tools(())
        if settings.api_key:
            # Whatever quotes it (an upstream's message, a tool's error) hides it,
            # even a key no pattern recognises (an Azure key is 32 hex digits).
            register_secret(settings.api_key)
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()
        if settings.uses_demo:
            log.warning(
                "No OPENAI_API_KEY or OPENAI_BASE_URL set: answering with the offline "
                "demo model."
            )
        else:
            log.info("Upstream: %s", _without_credentials(settings.base_url))

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    client = self._make_client()
                    # The SDK's platform headers are cached after the first request
                    # computes them, which runs `uname -p` in a subprocess. Under
                    # gevent every request of the first burst misses that cache and
                    # forks its own: a thousand forks stall a worker for seconds.
                    client.platform_headers()
                    self._client = client
        return self._client

    def _make_client(self) -> openai.OpenAI:
        settings = self.settings
        if settings.uses_demo:
            return openai.OpenAI(
                api_key="demo",
                base_url=DEMO_BASE_URL,
                http_client=httpx2.Client(transport=DemoTransport()),
            )
        return openai.OpenAI(
            api_key=settings.api_key or PLACEHOLDER_API_KEY,
            base_url=settings.base_url,
            # Connecting and each read wait at most this long; a stream may run longer.
            timeout=settings.upstream_timeout_seconds,
            # Retries happen before the first byte only: the SDK retries a failed
            # request, never a stream that has started.
            max_retries=settings.upstream_max_retries,
            http_client=LeanHttpClient(),
        )

    def chat_opener(self, messages: Messages) -> Opener:
        """A chat answer's stream, through Chat Completions or the Responses API."""
        settings = self.settings
        tools = self._offered(settings.chat_api)
        if settings.chat_api == "responses":
            return self._opener(
                "/responses",
                model=settings.model,
                stream=True,
                input=responses_input(messages),
                **self._output_cap("max_output_tokens"),
                **tools,
            )
        return self._opener(
            "/chat/completions",
            model=settings.model,
            stream=True,
            messages=messages,
            **self._output_cap("max_completion_tokens"),
            stream_options={"include_usage": True},
            **tools,
        )

    def chat(self, messages: Messages) -> Answer:
        """A chat answer: its first model call, and the next ones after tools ran."""
        if not self.tools:
            return Answer(self.chat_opener(messages))

        def follow_up(steps: Sequence[Step]) -> Opener:
            # As Chat Completions messages whichever the API: chat_opener converts
            # the whole conversation for the Responses API, the client's part too.
            added = [message for step in steps for message in step.chat_messages()]
            return self.chat_opener([*messages, *added])

        return Answer(self.chat_opener(messages), self.tools, follow_up)

    def completion(self, prompt: str) -> Answer:
        """A legacy completion (no tools: the legacy API has none)."""
        return Answer(self.completion_opener(prompt))

    def _offered(self, api: str) -> dict[str, Any]:
        return {"tools": self.tools.definitions(api)} if self.tools else {}

    def completion_opener(self, prompt: str) -> Opener:
        """A legacy completion's stream, for ``prompt``."""
        return self._opener(
            "/completions",
            model=self.settings.completion_model,
            stream=True,
            prompt=prompt,
            **self._output_cap("max_tokens"),
            stream_options={"include_usage": True},
        )

    def _opener(self, path: str, **body: object) -> Opener:
        """Send ``body`` to ``path`` through the SDK, and answer with the raw response.

        ``create()`` would end in the same ``client.request`` after steps that cost
        most of the CPU of opening a stream and serve nothing here: the conversion
        of its typed parameters (a recursive walk of the body against ``TypedDict``
        types, for fields that need no renaming), the building of the request's
        options (pydantic fills in each default anew: here a copy of a template),
        and the wrapping of the response. The SDK still builds the URL,
        authenticates, sends its platform headers, times out, retries and maps an
        error status to its exceptions (all before the first byte). The answer's
        raw SSE bytes are parsed by ``shared.streaming``: no pydantic object per
        chunk. The body's keys go in the order ``create()`` sends them.
        """
        options = _POST.model_copy(update={"url": path, "json_data": body})
        return functools.partial(
            self.client.request, httpx2.Response, options, stream=True
        )

    def _output_cap(self, name: str) -> dict[str, int]:
        """``STREAM_MAX_OUTPUT_TOKENS`` as each API names it: a cap on the bill.

        Chat Completions call it ``max_completion_tokens`` (OpenAI's reasoning models
        refuse the older ``max_tokens``), the Responses API ``max_output_tokens``,
        and legacy completions ``max_tokens``.
        """
        cap = self.settings.max_output_tokens
        return {} if cap is None else {name: cap}


class LeanHttpClient(openai.DefaultHttpxClient):
    """The SDK's default HTTP client, with ``LeanTransport`` for direct requests.

    httpx2 makes proxy transports from the environment (``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) only for a client given no
    ``transport=``: so none is given, and the default transport it makes is replaced
    instead. Origins sent through a proxy keep httpx2's own proxy transports, built
    and matched by httpx2 exactly as for the SDK's default client.
    """

    # httpx2.Client's hook for its default transport (private: if it were renamed,
    # tests/test_proxies.py would see direct requests miss LeanTransport).
    def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.BaseTransport:
        return LeanTransport()


def _without_credentials(base_url: str | None) -> str:
    """The upstream's address for a log line, without any ``user:password@``."""
    if not base_url:
        return "the OpenAI API"
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
