from django.apps import AppConfig


class InstancesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "instances"
    verbose_name = "Servers, instances and jobs"

    def ready(self) -> None:
        # Operations register themselves with the job registry when their module loads;
        # the runner imports none of them (DESIGN.md, layers).
        from instances import (  # noqa: F401
            configure,
            fence,
            init,
            lifecycle,
            rebuild,
            remaster,
            servers,
        )
