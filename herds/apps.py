from django.apps import AppConfig


class HerdsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "herds"
    verbose_name = "Herds and DR"

    def ready(self) -> None:
        # Herd operations register themselves with the job registry (instances.jobs).
        from herds import dns_refresh, failover, rolling_restart, switchover  # noqa: F401
