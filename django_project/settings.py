"""Settings that keep streaming intact: no middleware that buffers or compresses.

``GZipMiddleware`` and ``ConditionalGetMiddleware`` are left out on purpose: they
would compress or hold back ``text/event-stream`` bodies. The upstream settings come
from the same environment variables as the Flask app (``shared.config``).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.utils import get_random_secret_key

from shared.config import DEFAULT_ALLOWED_HOSTS, Settings, comma_list

BASE_DIR = Path(__file__).resolve().parent.parent

STREAM_SETTINGS = Settings.from_env()
# Who may use the streaming routes, beyond the shared rules: None (anyone), or a
# function of the request (or its dotted path), False refusing with 401. E.g.
# "django_project.access.signed_in", Django's login_required for an API route.
STREAM_AUTHORIZE = os.environ.get("DJANGO_STREAM_AUTHORIZE") or None

# Set DJANGO_SECRET_KEY in production: a random key per process signs nothing that
# outlives it, and differs between gunicorn workers (admin logins would not stick).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or get_random_secret_key()
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# Error pages and reports hide the key, in debug too (see django_project/debug.py).
DEFAULT_EXCEPTION_REPORTER_FILTER = "django_project.debug.KeyHidingFilter"
ALLOWED_HOSTS = comma_list(os.environ, "DJANGO_ALLOWED_HOSTS", DEFAULT_ALLOWED_HOSTS)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_project.apps.StreamConfig",
]

MIDDLEWARE = [
    "django_project.middleware.response_headers",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "django_project.urls"
WSGI_APPLICATION = "django_project.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE_PATH", BASE_DIR / "db.sqlite3"),
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"shared": {"handlers": ["console"], "level": "INFO"}},
}
