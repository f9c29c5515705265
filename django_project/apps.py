"""The project as a Django app, so that its upstream is set up when Django starts."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.utils.module_loading import import_string

from shared.guard import Guard
from shared.resumable import Answers, answers_for
from shared.tools import tools_for
from shared.upstream import Upstream


class StreamConfig(AppConfig):
    name = "django_project"
    upstream: Upstream
    guard: Guard
    answers: Answers | None

    def ready(self) -> None:
        # At start, not on the first request: the server says which upstream answers.
        stream_settings = settings.STREAM_SETTINGS
        tools = tools_for(stream_settings, settings.STREAM_TOOLS)
        StreamConfig.upstream = Upstream(stream_settings, tools)
        authorize = settings.STREAM_AUTHORIZE
        if isinstance(authorize, str):  # a dotted path, e.g. from the environment
            authorize = import_string(authorize)
        StreamConfig.guard = Guard(settings.STREAM_SETTINGS, authorize)
        StreamConfig.answers = answers_for(stream_settings)
