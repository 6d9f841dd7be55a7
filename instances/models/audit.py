"""The audit trail: one read-only row per login, refusal, job queued, cancelled or
retried, inventory edit, host-key pin and drill (instances.audit writes them).

A row names who (a username, kept as text: the trail outlives user rows and names people
who never had one, such as a refused login), from where (the remote address, or "worker"
or "cli"), what (a verb, the object, a one-line message) and when. It has no foreign key,
so a list page reads nothing but the rows themselves, and deleting a server or a user
never deletes or rewrites its history.
"""

from __future__ import annotations

from django.db import models
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from instances.choices import AuditVerb


class AuditEvent(models.Model):
    at = models.DateTimeField("when", default=timezone.now, db_index=True)
    verb = models.CharField("what", max_length=32, choices=AuditVerb.choices)
    username = models.CharField("who", max_length=150, blank=True, db_index=True)
    remote = models.CharField(
        "from",
        max_length=64,
        blank=True,
        help_text="From where: the remote address of the request, “worker” for what a "
        "worker did, “cli” for a management command.",
    )
    # The object as "app_label.model_name", its primary key and its name at the time.
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    message = models.CharField(max_length=500)
    changes = models.JSONField(
        default=dict, blank=True, help_text="An inventory edit's fields: {field: [old, new]}."
    )

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="auditevent_object_idx"),
        ]
        verbose_name = "audit event"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username} {self.get_verb_display()}"

    @property
    def object_url(self) -> str:
        """The object's admin page (no query), or "" when there is none to link to."""
        if not (self.object_type and self.object_id) or self.verb == AuditVerb.DELETED:
            return ""
        app_label, _, model_name = self.object_type.partition(".")
        if app_label not in ("herds", "instances"):
            # Users are Django's own admin's, which the roles do not see.
            return ""
        try:
            return reverse(f"admin:{app_label}_{model_name}_change", args=[self.object_id])
        except NoReverseMatch:
            return ""
