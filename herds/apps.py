from django.apps import AppConfig


class HerdsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "herds"
    verbose_name = "Herds and DR"
