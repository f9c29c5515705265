"""WSGI entry point: ``gunicorn -c gunicorn.conf.py django_project.wsgi``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_project.settings")

django_application = get_wsgi_application()

from django_project.errors import refuse_too_many_fields  # noqa: E402 (after setup)

application = refuse_too_many_fields(django_application)
