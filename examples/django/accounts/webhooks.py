"""The companion's security webhooks (Standard Webhooks), verified with the `standardwebhooks`
package: a login from a new device is logged (where an app would e-mail the user), and every
message is handled once however often it is delivered (at least once, same `webhook-id`)."""
import logging

from django.conf import settings
from django.core.cache import cache
from rest_framework import status
from rest_framework.decorators import api_view, authentication_classes, parser_classes, permission_classes
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

log = logging.getLogger("accounts.security")


class RawBody(BaseParser):
    """The body left as bytes: the signature covers them exactly as sent."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read()


@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
@parser_classes([RawBody])
def security_webhook(request):
    """POST /webhooks/multitokens, called by the companion (not through Envoy)."""
    if not settings.MULTITOKENS_WEBHOOK_SECRET:
        return Response({"detail": "webhooks are not configured"}, status=status.HTTP_404_NOT_FOUND)
    try:
        event = Webhook(settings.MULTITOKENS_WEBHOOK_SECRET).verify(request.body, dict(request.headers))
    except WebhookVerificationError:
        return Response({"detail": "bad signature"}, status=status.HTTP_400_BAD_REQUEST)
    # once per message: a redelivery (the companion restarted mid-delivery, say) is acknowledged
    # and skipped. The default cache is per process; a deployment uses a shared one (Redis, DB).
    if not cache.add("multitokens-webhook:" + request.headers["webhook-id"], 1, timeout=2 * 86400):
        return Response(status=status.HTTP_204_NO_CONTENT)
    data = event.get("data", {})
    if event.get("type") == "token.issued" and not data.get("first_device"):
        user, device, token_id = data.get("user"), data.get("device"), data.get("token_id")
        log.warning("new device logged in: user=%s device=%r token_id=%s", user, device, token_id)
    elif event.get("type") == "user.logged_out_everywhere":
        log.warning("logged out everywhere: user=%s tokens=%s", data.get("user"), data.get("count"))
    return Response(status=status.HTTP_204_NO_CONTENT)
