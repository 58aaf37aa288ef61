"""Authentication from the filter's identity headers, with Django's own RemoteUser machinery.

Only the filter sets x-multitokens-*: it removes whatever a client sends under those names (and
their underscore spellings, which WSGI servers map to the same META keys), and Envoy refuses header
names with underscores. So HTTP_X_MULTITOKENS_USER is trusted here, and only here.
"""
from django.contrib.auth.backends import RemoteUserBackend
from rest_framework.authentication import RemoteUserAuthentication


class ExistingRemoteUserBackend(RemoteUserBackend):
    """The header names a user who logged in: never creates one."""

    create_unknown_user = False


class MultitokensAuthentication(RemoteUserAuthentication):
    """DRF authentication from the filter's identity headers.

    ``request.auth`` is the token's context: ``{"device", "token_id", "scopes"}``.
    """

    header = "HTTP_X_MULTITOKENS_USER"

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        user, _ = result
        meta = request.META
        context = {
            "device": meta.get("HTTP_X_MULTITOKENS_DEVICE", ""),
            "token_id": meta.get("HTTP_X_MULTITOKENS_TOKEN_ID", ""),
            "scopes": meta.get("HTTP_X_MULTITOKENS_SCOPES", "").split(),
        }
        return user, context

    def authenticate_header(self, request):
        # DRF then answers 401 (not 403) with its usual body, like the filter does
        return 'Bearer realm="api"'
