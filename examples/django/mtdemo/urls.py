"""Paths as envoy/envoy.yaml expects them: POST /login and /healthz are excluded from the filter;
everything else needs a token. /webhooks/multitokens is called by the companion directly,
signed (accounts/webhooks.py)."""
from django.urls import path

from accounts import views, webhooks

urlpatterns = [
    path("healthz", views.healthz),
    path("login", views.login),
    path("api/whoami", views.whoami),
    path("api/devices", views.devices),
    path("logout", views.logout),
    path("logout-all", views.logout_all),
    path("logout-others", views.logout_others),
    path("webhooks/multitokens", webhooks.security_webhook),
]
