"""WSGI entry point (gunicorn mtdemo.wsgi)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mtdemo.settings")
application = get_wsgi_application()
