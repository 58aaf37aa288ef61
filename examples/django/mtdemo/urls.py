"""Paths as envoy/envoy.yaml expects them: POST /login and /healthz are excluded from the filter;
everything else needs a token."""
from django.urls import path

from accounts import views

urlpatterns = [
    path("healthz", views.healthz),
    path("login", views.login),
    path("api/whoami", views.whoami),
    path("api/devices", views.devices),
    path("logout", views.logout),
    path("logout-all", views.logout_all),
    path("logout-others", views.logout_others),
]
