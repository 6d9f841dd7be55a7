"""Health samples: what each health sweep saw of each instance, kept for a few hours.

The instance row holds only the last observation; the dashboard's lag sparklines need the
history. A sweep writes one row per instance in one INSERT and deletes what is older than
HEALTH_SAMPLE_RETENTION hours in one DELETE (instances.health).
"""

from __future__ import annotations

from django.db import models


class HealthSample(models.Model):
    # 64-bit: a fleet of 1,000 instances polled every 30 s adds 2.9 million rows a day.
    id = models.BigAutoField(primary_key=True)
    instance = models.ForeignKey(
        "instances.Instance",
        on_delete=models.CASCADE,
        related_name="health_samples",
        # The (instance, taken_at) index below serves the foreign key too.
        db_index=False,
    )
    taken_at = models.DateTimeField()
    online = models.BooleanField()
    # Blank when it was not measured (a primary; a replica or its upstream not answering):
    # a gap in the picture, never a zero.
    lag_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    lag_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [
            # Pruning and the dashboard's window read by time; a sparkline by instance.
            models.Index(fields=["taken_at"], name="healthsample_taken_idx"),
            models.Index(fields=["instance", "taken_at"], name="healthsample_instance_idx"),
        ]

    def __str__(self) -> str:
        return f"instance {self.instance_id} at {self.taken_at:%Y-%m-%d %H:%M:%S}"
