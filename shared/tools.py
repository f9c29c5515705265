"""Which Python functions the apps' models may call, run by the server.

``STREAM_TOOLS`` names them by dotted path (``package.module.function``); code may
give the functions themselves (``create_app(tools=[...])``, Django's
``STREAM_TOOLS`` setting). With neither, the demo model gets the demo's example
tools, and any other upstream none: a tool runs on the server with its rights, so
none is offered unless chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import import_module
from typing import Any

from shared.config import Settings
from shared.streaming import Tools

# A function, or its dotted path.
ToolSpec = Callable[..., Any] | str


def tools_for(settings: Settings, chosen: Iterable[ToolSpec] | None = None) -> Tools:
    """The tools of an app: ``chosen`` in code, else ``STREAM_TOOLS``, else the
    demo's when the demo answers. A path that can't be imported stops the server
    with one line naming it."""
    if chosen is None:
        chosen = settings.tools or (_demo_tools() if settings.uses_demo else ())
    try:
        functions = [_function(spec) for spec in chosen]
    except ValueError as error:
        raise SystemExit(f"Bad setting: {error}") from None
    return Tools(
        functions,
        max_steps=settings.max_steps,
        timeout_seconds=settings.tool_timeout_seconds,
    )


def _function(spec: ToolSpec) -> Callable[..., Any]:
    if not isinstance(spec, str):
        return spec
    module_name, _, name = spec.rpartition(".")
    try:
        function = getattr(import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(
            f"STREAM_TOOLS names {spec!r}, which can't be imported: {exc}"
        ) from None
    if not callable(function):
        raise ValueError(f"STREAM_TOOLS names {spec!r}, which is not a function")
    return function  # type: ignore[no-any-return]


def _demo_tools() -> list[ToolSpec]:
    from shared.demo_tools import DEMO_TOOLS

    return list(DEMO_TOOLS)
