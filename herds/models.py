"""Environments, herds (replication groups) and their DR candidates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Exists, F, OuterRef, Q, Subquery, Value
from django.db.models.functions import Cast, Coalesce, Concat
from django.utils import timezone

from instances.choices import JobKind, Role
from instances.validators import (
    validate_absolute_path,
    validate_dns_name,
    validate_identifier,
    validate_pg_version,
    validate_port,
    validate_slug_name,
)

if TYPE_CHECKING:
    from instances.models import Instance

DEFAULT_DATA_ROOT = "/var/lib/postgresql"
DEFAULT_PORT = 5432


class Environment(models.Model):
    """dev, stage, prod, dr-site…: a group of servers and herds."""

    name = models.CharField(max_length=63, unique=True, validators=[validate_slug_name])
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def _instance_model() -> type[Instance]:
    # Imported when called: instances.models refers to herds.Herd, and the two apps load
    # in either order.
    from instances.models import Instance

    return Instance


def _instances(**filters) -> models.QuerySet:
    return _instance_model().objects.filter(herd=OuterRef("pk"), **filters).order_by()


def _count_of(**filters) -> Coalesce:
    from instances.models import correlated_count

    return correlated_count(_instance_model().objects.filter(**filters), "herd")


class HerdQuerySet(models.QuerySet):
    def with_summary(self) -> HerdQuerySet:
        """Primary, replica count and split-brain count for list pages, in the same query.

        Correlated subqueries rather than JOIN + GROUP BY: PostgreSQL evaluates them only
        for the rows of the page, so a page of 100 herds costs the same with 2,000 herds.
        """
        primary = (
            _instances(role=Role.PRIMARY)
            # With two primaries recorded, show the one that answers: it is the one
            # clients reach.
            .order_by(F("online").desc(nulls_last=True), "pk")
            .annotate(
                address=Concat(
                    "server__hostname",
                    Value(":"),
                    Cast("port", models.CharField()),
                    output_field=models.CharField(),
                )
            )
            .values("address")[:1]
        )
        return self.annotate(
            primary_address=Subquery(primary, output_field=models.CharField()),
            replica_count=_count_of(role=Role.REPLICA),
            online_primary_count=_count_of(role=Role.PRIMARY, online=True),
        )

    def dr_pairs(self) -> HerdQuerySet:
        """Herds with a primary and at least one replica: the ones a DR failover concerns."""
        return self.filter(
            Exists(_instances(role=Role.PRIMARY)), Exists(_instances(role=Role.REPLICA))
        )

    def split_brain(self) -> HerdQuerySet:
        return self.with_summary().filter(online_primary_count__gt=1)


class Herd(models.Model):
    """One replication group: a logical database served by a primary and its replicas."""

    name = models.CharField(
        max_length=63,
        validators=[validate_identifier],
        help_text="Letters, digits, “_” and “-”, starting with a letter.",
    )
    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="herds")
    description = models.TextField(blank=True)
    port = models.PositiveIntegerField(default=DEFAULT_PORT, validators=[validate_port])
    data_root = models.CharField(
        max_length=255,
        default=DEFAULT_DATA_ROOT,
        validators=[validate_absolute_path],
        help_text="Instances keep their data in {data root}/{version}/{cluster name} "
        "unless they set their own data directory.",
    )
    pg_version = models.PositiveSmallIntegerField(
        "PostgreSQL version", validators=[validate_pg_version], help_text="Major version, e.g. 15."
    )
    cluster_name = models.CharField(
        max_length=63,
        blank=True,
        validators=[validate_identifier],
        help_text="Debian cluster name (pg_lsclusters); blank: the herd's name.",
    )
    vhost = models.CharField(
        "vhost",
        max_length=253,
        blank=True,
        validators=[validate_dns_name],
        help_text="DNS name applications use to reach the primary.",
    )
    ro_vhost = models.CharField(
        "read-only vhost",
        max_length=253,
        blank=True,
        validators=[validate_dns_name],
        help_text="Optional DNS name for read-only traffic, pointed at a replica.",
    )
    owner = models.CharField(
        max_length=200, blank=True, help_text="Team or application that owns this database."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = HerdQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        permissions = [
            ("switchover_herd", "Can run planned switchovers"),
            ("failover_herd", "Can run DR failovers"),
            ("refresh_dns", "Can refresh a herd's DNS records"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["environment", "name"],
                name="herd_unique_name_per_environment",
                violation_error_message="This environment already has a herd with this name.",
            ),
            # One DNS name can point at one primary only.
            models.UniqueConstraint(
                fields=["vhost"],
                condition=~Q(vhost=""),
                name="herd_unique_vhost",
                violation_error_message="Another herd already uses this vhost.",
            ),
            models.UniqueConstraint(
                fields=["ro_vhost"],
                condition=~Q(ro_vhost=""),
                name="herd_unique_ro_vhost",
                violation_error_message="Another herd already uses this read-only vhost.",
            ),
            models.CheckConstraint(
                condition=Q(port__gte=1, port__lte=65535),
                name="herd_port_range",
                violation_error_message="The port must be between 1 and 65535.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def effective_cluster_name(self) -> str:
        return self.cluster_name or self.name

    @property
    def online_primaries(self) -> int:
        """Instances recorded as primary and online; uses with_summary()'s count if present."""
        annotated = self.__dict__.get("online_primary_count")
        if annotated is not None:
            return annotated
        if self.pk is None:
            return 0
        return self.instances.filter(role=Role.PRIMARY, online=True).count()

    @property
    def split_brain(self) -> bool:
        """Two or more online primaries: clients may be writing to both.

        Recording it is allowed (the inventory must say what is true), but every page
        showing the herd flags it, and operations must refuse to act until a DBA fences one.
        """
        return self.online_primaries > 1

    def primaries(self) -> list[Instance]:
        """Recorded primaries, online ones first: more than one only in trouble."""
        return list(
            self.instances.filter(role=Role.PRIMARY)
            .select_related("server")
            .order_by(F("online").desc(nulls_last=True), "pk")
        )

    @property
    def primary(self) -> Instance | None:
        primaries = self.primaries()
        return primaries[0] if primaries else None

    def replicas(self) -> list[Instance]:
        return list(
            self.instances.filter(role=Role.REPLICA).select_related("server", "upstream__server")
        )

    def clean(self) -> None:
        self.vhost = self.vhost.lower()
        self.ro_vhost = self.ro_vhost.lower()
        if self.vhost and self.vhost == self.ro_vhost:
            raise ValidationError(
                {"ro_vhost": "The read-only vhost must differ from the vhost of the primary."}
            )
        # The unique constraints cover vhost against vhost; a name used as one herd's
        # vhost and another's read-only vhost would send writes to a replica.
        others = Herd.objects.exclude(pk=self.pk)
        if self.vhost and others.filter(ro_vhost=self.vhost).exists():
            raise ValidationError({"vhost": "Another herd uses this name as its read-only vhost."})
        if self.ro_vhost and others.filter(vhost=self.ro_vhost).exists():
            raise ValidationError({"ro_vhost": "Another herd uses this name as its vhost."})

    def save(self, *args, **kwargs) -> None:
        # The cluster name is fixed when the herd is created: renaming a herd in the
        # inventory must not make ElepHaaS look for a cluster that does not exist on disk.
        if not self.cluster_name:
            self.cluster_name = self.name
        super().save(*args, **kwargs)


class DRPair(Herd):
    """A herd seen as a DR pair: its primary, its replicas and its acknowledged candidates."""

    class Meta:
        proxy = True
        verbose_name = "DR pair"
        verbose_name_plural = "DR pairs"


class DRCandidate(models.Model):
    """A DBA's acknowledgement that a replica may be promoted in a DR failover.

    A separate row, not a flag on Instance: an acknowledgement is a decision with an
    author and a date that the failover planner and auditors read, and withdrawing it is
    deleting the row. Failover picks the most up-to-date candidate; `priority` breaks
    ties (lower first).
    """

    herd = models.ForeignKey(Herd, on_delete=models.CASCADE, related_name="dr_candidates")
    instance = models.OneToOneField(
        "instances.Instance", on_delete=models.CASCADE, related_name="dr_candidacy"
    )
    priority = models.PositiveSmallIntegerField(
        default=1,
        help_text="Between equally up-to-date candidates, failover picks the lowest number.",
    )
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    acknowledged_at = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["herd", "priority", "pk"]
        verbose_name = "DR candidate"

    def __str__(self) -> str:
        return f"DR candidate {self.instance} (priority {self.priority})"

    def clean(self) -> None:
        if self.instance_id is None or self.herd_id is None:
            return
        instance = self.instance
        if instance.herd_id != self.herd_id:
            raise ValidationError(
                {
                    "instance": f"{instance} belongs to herd {instance.herd.name}, not to "
                    f"{self.herd.name}."
                }
            )
        if instance.role != Role.REPLICA:
            raise ValidationError(
                {
                    "instance": f"{instance} is recorded as {instance.get_role_display()}; only "
                    f"replicas can be acknowledged as DR candidates."
                }
            )


# A drill is the record of one of the two herd moves: the job kinds are the vocabulary.
DRILL_KINDS = [(kind.value, kind.label) for kind in JobKind.drills()]


class Drill(models.Model):
    """The auditor's record of one switchover or failover: who, when, how fast, what lost.

    Written by the job as it runs; `rto_seconds` is from the job's start to the moment the
    new primary accepted a write, `data_lost_bytes` the WAL between the old primary's end
    and the promoted one: proved (`data_lost_exact`) for a switchover (0, by construction)
    or when the old primary's end of WAL was read; otherwise only a lower bound, from its
    last recorded position.
    """

    job = models.OneToOneField("instances.Job", on_delete=models.CASCADE, related_name="drill")
    herd = models.ForeignKey(Herd, on_delete=models.PROTECT, related_name="drills")
    kind = models.CharField(max_length=16, choices=DRILL_KINDS)
    requested_by_name = models.CharField(max_length=150, blank=True)
    plan = models.TextField(blank=True, help_text="The plan's sentence: what and why.")
    old_primary = models.CharField(max_length=300, blank=True)
    new_primary = models.CharField(max_length=300, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    writable_at = models.DateTimeField(null=True, blank=True)
    dns_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_known_lsn = models.CharField(max_length=17, blank=True)
    promoted_lsn = models.CharField(max_length=17, blank=True)
    data_lost_bytes = models.BigIntegerField(null=True, blank=True)
    data_lost_exact = models.BooleanField(
        default=False,
        help_text="Whether data lost was proved; if not, it is a lower bound (or unknown).",
    )
    dns_ok = models.BooleanField(null=True)
    outcome = models.CharField(max_length=500, blank=True)
    wal_salvaged_bytes = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="WAL copied from the old primary's pg_wal to the new primary before it "
        "was promoted (a failover whose old primary's disk still answered).",
    )
    fence_outcome = models.CharField(
        max_length=500,
        blank=True,
        help_text="What fencing the old primary did: stopped and kept from starting, the "
        "fencing command's result, or only marked in the inventory.",
    )
    split_brain_from = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The fenced old primary was found accepting writes: since when (its "
        "PostgreSQL's start).",
    )
    split_brain_until = models.DateTimeField(
        null=True, blank=True, help_text="…until the fence job stopped it."
    )

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.herd.name} at {self.started_at:%Y-%m-%d %H:%M}"

    @property
    def rto_seconds(self) -> float | None:
        if self.writable_at is None:
            return None
        return (self.writable_at - self.started_at).total_seconds()

    @property
    def dns_seconds(self) -> float | None:
        if self.dns_at is None:
            return None
        return (self.dns_at - self.started_at).total_seconds()
