"""Login (DRF's obtain_auth_token answer, issued by the companion), whoami, the three logouts, and
the user's devices."""
from django.apps import apps
from django.contrib.auth import authenticate
from rest_framework import status
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from . import companion


def token_context(request):
    """The token's context: from the filter's headers (``{"device", "token_id", "scopes"}``), or
    empty for an old token during a migration (``request.auth`` is then the old token)."""
    if isinstance(request.auth, dict):
        return request.auth
    return {"device": "", "token_id": "", "scopes": [], "legacy": True}


def expire_legacy_tokens(user):
    """During a migration, log the user's old tokens out too (DRF's token table standing in for
    the old plugin's ``MultiToken.expire_all_tokens``)."""
    if apps.is_installed("rest_framework.authtoken"):
        from rest_framework.authtoken.models import Token

        return Token.objects.filter(user=user).delete()[0]
    return 0


def companion_failure(error):
    code = error.status if error.status in (400, 404, 409) else status.HTTP_503_SERVICE_UNAVAILABLE
    return Response({"detail": error.detail}, status=code)


@api_view(["GET"])
@authentication_classes([])
@permission_classes([AllowAny])
def healthz(request):
    return Response({"status": "ok"})


@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
def login(request):
    """``{"username", "password", "device"?}`` → ``{"token": ...}``, as DRF's obtain_auth_token."""
    username, password = request.data.get("username"), request.data.get("password")
    user = authenticate(request._request, username=username, password=password) if username and password else None
    if user is None or not user.is_active:
        return Response({"non_field_errors": ["Unable to log in with provided credentials."]}, status=status.HTTP_400_BAD_REQUEST)
    # a DPoP proof sent with the login binds the token to the client's key (checked by the
    # companion against this request as the client made it: method and absolute URI)
    proof = request.headers.get("DPoP")
    dpop = {"proof": proof, "method": request.method, "uri": request.build_absolute_uri(request.path)} if proof else None
    try:
        token, _first = companion.create_token(user, device=str(request.data.get("device", "")), dpop=dpop)
    except companion.CompanionError as e:
        return companion_failure(e)
    return Response({"token": token})


@api_view(["GET"])
def whoami(request):
    context = token_context(request)
    return Response({"username": request.user.get_username(), "device": context["device"], "token_id": context["token_id"]})


@api_view(["GET"])
def devices(request):
    try:
        tokens = companion.list_tokens(request.user)
    except companion.CompanionError as e:
        return companion_failure(e)
    current = token_context(request)["token_id"]
    return Response([
        {"id": t["id"], "device": t["device"], "created": t["created"], "current": t["id"] == current,
         "suspended": t.get("suspended", False),
         # device activity as the edge saw it (absent until the token is first used through Envoy)
         "last_seen": t.get("last_seen"), "last_address": t.get("last_address"),
         "last_user_agent": t.get("last_user_agent")}
        for t in tokens
    ])


@api_view(["POST"])
def logout(request):
    """Log out this device."""
    if token_context(request).get("legacy"):
        request.auth.delete()
        return Response({"revoked": 1})
    try:
        answer = companion.expire_token(request.user, token_context(request)["token_id"])
    except companion.CompanionError as e:
        return companion_failure(e)
    return Response({"revoked": answer["revoked"]})


@api_view(["POST"])
def logout_all(request):
    """Log out everywhere (after a password change, say)."""
    try:
        answer = companion.expire_all_tokens(request.user)
    except companion.CompanionError as e:
        return companion_failure(e)
    return Response({"revoked": answer["revoked"] + expire_legacy_tokens(request.user)})


@api_view(["POST"])
def logout_others(request):
    """Log out every other device."""
    context = token_context(request)
    if context.get("legacy"):
        return Response({"detail": "Log in again to use this."}, status=status.HTTP_400_BAD_REQUEST)
    try:
        answer = companion.expire_other_tokens(request.user, context["token_id"])
    except companion.CompanionError as e:
        return companion_failure(e)
    return Response({"revoked": answer["revoked"]})
