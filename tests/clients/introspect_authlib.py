"""An RFC 7662 resource server built on Authlib, checking tokens against the companion.

Usage: introspect_authlib.py <introspection url> <client id> <client secret> <token>...
Prints one JSON line per token: {"active": true, "sub": ..., "scope": ...} or {"active": false,
"error": ...}. Authlib's OAuth2Session sends the request the way RFC 7662 clients do (HTTP Basic,
client_secret_basic) and its IntrospectTokenValidator decides (active, exp, scope).
"""
import json
import sys

from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc6750 import InsufficientScopeError, InvalidTokenError
from authlib.oauth2.rfc7662 import IntrospectTokenValidator

url, client_id, secret, *tokens = sys.argv[1:]
session = OAuth2Session(client_id, secret, token_endpoint_auth_method="client_secret_basic")


class CompanionValidator(IntrospectTokenValidator):
    def introspect_token(self, token_string):
        response = session.introspect_token(url, token=token_string, token_type_hint="access_token")
        response.raise_for_status()
        return response.json()


validator = CompanionValidator()
for token in tokens:
    claims = validator.authenticate_token(token)
    try:
        validator.validate_token(claims, scopes=["orders:read"], request=None)
        print(json.dumps({"active": True, "sub": claims["sub"], "scope": claims["scope"]}))
    except (InvalidTokenError, InsufficientScopeError) as e:
        print(json.dumps({"active": bool(claims.get("active")), "error": e.error}))
