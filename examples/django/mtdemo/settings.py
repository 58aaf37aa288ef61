"""A Django REST framework API behind Envoy and the multitokens filter.

The filter checks the bearer token at the edge and hands the identity to Django in headers
(x-multitokens-user, -device, -token-id, -scopes) that only it can set; Django authenticates
requests from them with its own RemoteUser machinery (accounts.authentication), and issues and
revokes tokens through the companion's admin API (accounts.companion).
"""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-set-DJANGO_SECRET_KEY")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "accounts",
]

# A token API: no sessions, no CSRF cookies; every request carries its own credential.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]

ROOT_URLCONF = "mtdemo.urls"
WSGI_APPLICATION = "mtdemo.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB", str(BASE_DIR / "db.sqlite3")),
    }
}

AUTHENTICATION_BACKENDS = [
    # the login view checks passwords
    "django.contrib.auth.backends.ModelBackend",
    # the filter's identity header names an existing user (never creates one)
    "accounts.authentication.ExistingRemoteUserBackend",
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.MultitokensAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}

# Where the companion's admin API is, and its admin key (the login and logout views use it).
MULTITOKENS_URL = os.environ.get("MULTITOKENS_URL", "http://127.0.0.1:18080")
MULTITOKENS_ADMIN_KEY = os.environ.get("MULTITOKENS_ADMIN_KEY", "")
# The secret of the companion's `[[webhooks]]` endpoint for this app (`multitokens keygen --webhook`);
# unset: /webhooks/multitokens answers 404.
MULTITOKENS_WEBHOOK_SECRET = os.environ.get("MULTITOKENS_WEBHOOK_SECRET", "")

# Migrating from djforge-redis-multitokens: with DJANGO_LEGACY_TOKENS=1 the old tokens (DRF
# token format, `Authorization: Token <key>`) are still accepted, by DRF's TokenAuthentication
# standing in for the old plugin's CachedTokenAuthentication; Envoy routes them past the filter
# (envoy/migration/legacy-token-route.yaml). New tokens come from the companion.
if os.environ.get("DJANGO_LEGACY_TOKENS") == "1":
    INSTALLED_APPS.append("rest_framework.authtoken")
    REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"].append("rest_framework.authentication.TokenAuthentication")

USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"accounts.security": {"handlers": ["console"], "level": "INFO"}},
}
