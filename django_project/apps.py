"""The project as a Django app, so that its upstream is set up when Django starts."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings

from shared.upstream import Upstream


class StreamConfig(AppConfig):
    name = "django_project"
    upstream: Upstream

    def ready(self) -> None:
        # At start, not on the first request: the server says which upstream answers.
        StreamConfig.upstream = Upstream(settings.STREAM_SETTINGS)
