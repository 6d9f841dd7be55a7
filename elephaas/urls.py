from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

# Connects the login audit and LDAP-error receivers. The project package is not an
# installed app (no AppConfig.ready()), and the URLconf is loaded before any login view.
import elephaas.auth  # noqa: F401
from elephaas.healthz import healthz

admin.site.site_header = "ElepHaaS"
admin.site.site_title = "ElepHaaS"
admin.site.index_title = "PostgreSQL fleet"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    # For load balancers: no login, JSON, 200 or 503 (elephaas/healthz.py).
    path("healthz", healthz, name="healthz"),
]
