"""Settings that keep streaming intact: no middleware that buffers or compresses.

``GZipMiddleware`` and ``ConditionalGetMiddleware`` are left out on purpose: they
would compress or hold back ``text/event-stream`` bodies. The upstream settings come
from the same environment variables as the Flask app (``shared.config``).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

from shared.config import DEFAULT_ALLOWED_HOSTS, Settings
from shared.streaming import comma_list

BASE_DIR = Path(__file__).resolve().parent.parent

STREAM_SETTINGS = Settings.from_env_or_exit()
# Who may use the streaming routes, beyond the shared rules: None (anyone), or a
# function of the request (or its dotted path), False refusing with 401. E.g.
# "django_project.access.signed_in", Django's login_required for an API route.
STREAM_AUTHORIZE = os.environ.get("DJANGO_STREAM_AUTHORIZE") or None
# The functions the model may call (or their dotted paths): None for STREAM_TOOLS,
# or the demo's example tools when the demo model answers.
STREAM_TOOLS = None

# Set DJANGO_SECRET_KEY in production: a random key per process signs nothing that
# outlives it, and differs between gunicorn workers (admin logins would not stick).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or get_random_secret_key()
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
# Error pages and reports hide the key, in debug too (see django_project/debug.py).
DEFAULT_EXCEPTION_REPORTER_FILTER = "django_project.debug.KeyHidingFilter"
ALLOWED_HOSTS = comma_list(os.environ, "DJANGO_ALLOWED_HOSTS", DEFAULT_ALLOWED_HOSTS)


def _flag(name: str) -> bool:
    """``1`` or ``0`` (or unset): a typo must not silently leave a flag off."""
    value = os.environ.get(name, "0").strip()
    if value not in {"0", "1", ""}:
        raise ImproperlyConfigured(f"Set {name} to 1 or 0, got {value!r}.")
    return value == "1"


def _origins(name: str) -> list[str]:
    """A comma-separated list of origins, each with its scheme, spaces trimmed."""
    origins = comma_list(os.environ, name)
    for origin in origins:
        if not origin.startswith(("http://", "https://")):
            raise ImproperlyConfigured(
                f"{name}: write each origin with its scheme, e.g. "
                f"'https://chat.example.com', got {origin!r}."
            )
    return origins


# Behind a proxy that terminates TLS (the README's nginx block), Django sees http:
# its CSRF check then refuses the browser's https Origin, and admin logins fail.
# This trusts the proxy's X-Forwarded-Proto (the proxy must set it, overwriting the
# client's) and marks the session and CSRF cookies Secure, as the site is https.
BEHIND_TLS_PROXY = _flag("DJANGO_BEHIND_TLS_PROXY")
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = BEHIND_TLS_PROXY
# Origins of forms that post here, when a proxy changes the Host the app sees.
CSRF_TRUSTED_ORIGINS = _origins("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles, whose runserver command it extends.
    "django_project.apps.StreamConfig",
    "django.contrib.staticfiles",
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
