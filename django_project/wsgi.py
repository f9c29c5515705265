"""WSGI entry point: ``gunicorn -c gunicorn.conf.py django_project.wsgi``."""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from shared.guard import refuse_too_many_fields

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_project.settings")

django_application = get_wsgi_application()

application = refuse_too_many_fields(
    django_application, settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
)
