"""The companion's admin API, as the login and logout views call it (standard library only)."""
import json
import urllib.error
import urllib.parse
import urllib.request

from django.conf import settings


class CompanionError(Exception):
    """The companion refused or could not be reached."""

    def __init__(self, status, detail):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def call(method, path, body=None):
    """One admin API call; returns the decoded JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(settings.MULTITOKENS_URL + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + settings.MULTITOKENS_ADMIN_KEY)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail", e.reason)
        except ValueError:
            detail = e.reason
        raise CompanionError(e.code, detail) from None
    except OSError as e:
        raise CompanionError(503, "token service unavailable: %s" % e) from None


def user_path(user):
    return "/v1/users/%s/tokens" % urllib.parse.quote(user, safe="")


def create_token(user, device="", dpop=None):
    """The old ``MultiToken.create_token(user)``: returns ``(token, first)``. With ``dpop``
    (``{"proof", "method", "uri"}``: the DPoP header the client sent to the login, and that
    request), the token is bound to the proof's key (RFC 9449): usable with that key's proofs only."""
    body = {"user": user.get_username(), "device": device}
    if dpop:
        body["dpop"] = dpop
    issued = call("POST", "/v1/tokens", body)
    return issued["token"], issued["first"]


def expire_token(user, token_id):
    """The old ``MultiToken.expire_token(request.auth)``, by the token's public id."""
    return call("DELETE", "%s/%s" % (user_path(user.get_username()), urllib.parse.quote(token_id, safe="")))


def expire_all_tokens(user):
    """The old ``MultiToken.expire_all_tokens(user)``: log out everywhere."""
    return call("DELETE", user_path(user.get_username()))


def expire_other_tokens(user, token_id):
    """Log out every device but the current one."""
    return call("DELETE", "%s?except_id=%s" % (user_path(user.get_username()), urllib.parse.quote(token_id, safe="")))


def list_tokens(user):
    """The user's live tokens: id, device, created, expires_in, scopes."""
    return call("GET", user_path(user.get_username()))
