"""Error pages that never show the upstream key, even with ``DJANGO_DEBUG=1``.

Django's own filter hides credential-named settings and request headers, and the
local variables of functions marked with ``sensitive_variables`` (the views are),
but only when ``DEBUG`` is off: the debug page exists to show everything. The key
also lives outside our frames: the openai SDK's own functions hold it as
``api_key`` and in their request headers. So this filter stays on in debug, and also
hides any variable, in any frame, whose value shows the key.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.views.debug import SafeExceptionReporterFilter


class KeyHidingFilter(SafeExceptionReporterFilter):
    def is_active(self, request: HttpRequest | None) -> bool:
        return True  # in debug too: see the module's docstring

    def get_traceback_frame_variables(
        self, request: HttpRequest | None, tb_frame: Any
    ) -> Any:
        variables = super().get_traceback_frame_variables(request, tb_frame)
        key = settings.STREAM_SETTINGS.api_key
        if not key:
            return variables
        return [
            (name, self.cleansed_substitute if _shows(value, key) else value)
            for name, value in variables
        ]


def _shows(value: object, key: str) -> bool:
    try:
        return key in repr(value)
    except Exception:  # a broken __repr__: the page won't show it either
        return False
