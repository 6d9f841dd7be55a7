"""What each instance's pg_settings say, where it differs from the built-in default."""

from __future__ import annotations

from django.db import models


class InstanceSetting(models.Model):
    """One non-default setting of one instance, as last gathered (instances.settings_gather):
    `since` is when this value was first seen, the instance's `settings_seen_at` when its
    settings were last read.

    Only settings whose source is not the built-in default (nor a client's or session's
    own) are kept: a fleet of 10,000 instances keeps ~30 rows each, not ~350. An instance
    with no row for a name runs PostgreSQL's built-in default.
    """

    instance = models.ForeignKey(
        "instances.Instance", on_delete=models.CASCADE, related_name="settings_seen"
    )
    name = models.CharField(max_length=200, db_index=True)
    setting = models.TextField(help_text="pg_settings.setting, in the parameter's base unit.")
    unit = models.CharField(max_length=16, blank=True)
    shown = models.TextField(verbose_name="value", help_text="As SHOW prints it (e.g. 128MB).")
    source = models.CharField(max_length=32, help_text="pg_settings.source")
    pending_restart = models.BooleanField(
        default=False, help_text="Changed in the configuration; takes effect at a restart."
    )
    since = models.DateTimeField(help_text="When this value was first seen.")

    class Meta:
        verbose_name = "setting (fleet-wide)"
        verbose_name_plural = "settings (fleet-wide)"
        constraints = [
            models.UniqueConstraint(fields=["instance", "name"], name="one_row_per_setting")
        ]

    def __str__(self) -> str:
        return f"{self.name} = {self.shown}"
