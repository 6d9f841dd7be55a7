"""One PostgreSQL cluster of a herd on one server."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce

from instances.choices import Role
from instances.validators import (
    join_path,
    normalise_path,
    validate_absolute_path,
    validate_lsn,
    validate_pg_version,
    validate_port,
)

# How far clean() follows upstream links looking for a loop; cascades deeper than this
# do not exist in practice, and the walk costs one query per level.
MAX_CASCADE_DEPTH = 32


def correlated_count(queryset: models.QuerySet, outer: str) -> Coalesce:
    """COUNT(*) of `queryset` rows whose `outer` field is the outer row's pk, as a subquery.

    For list pages: unlike JOIN + GROUP BY, PostgreSQL evaluates it only for the rows of
    the page, so a page costs the same whether the table has 100 rows or 10,000.
    """
    counted = (
        queryset.filter(**{outer: OuterRef("pk")})
        .order_by()
        .values(outer)
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=models.IntegerField()), 0)


class InstanceQuerySet(models.QuerySet):
    def with_related(self) -> InstanceQuerySet:
        """Everything __str__ and the admin lists read, in the same query."""
        return self.select_related("herd", "server", "upstream__server")


class Instance(models.Model):
    """A PostgreSQL cluster of `herd` running on `server`.

    `port` and `pg_version` are stored, not inherited at read time: when left blank they
    are copied from the herd on save. They are facts about the running cluster (an
    instance may lag behind its herd during a major upgrade, or listen elsewhere), the
    (server, port) uniqueness needs a real value, and the admin filters on them.
    `data_dir` is different: blank means "the Debian layout under the herd's data root",
    computed when read, so moving a herd's data root moves every instance that follows it.
    """

    herd = models.ForeignKey("herds.Herd", on_delete=models.PROTECT, related_name="instances")
    server = models.ForeignKey(
        "instances.Server", on_delete=models.PROTECT, related_name="instances"
    )
    port = models.PositiveIntegerField(
        blank=True, validators=[validate_port], help_text="Blank: the herd's port."
    )
    data_dir = models.CharField(
        "data directory",
        max_length=255,
        blank=True,
        validators=[validate_absolute_path],
        help_text="Blank: {herd data root}/{version}/{cluster name}, the Debian layout.",
    )
    pg_version = models.PositiveSmallIntegerField(
        "PostgreSQL version",
        blank=True,
        validators=[validate_pg_version],
        help_text="Major version; blank: the herd's.",
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.UNKNOWN)
    upstream = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="downstreams",
        help_text="The instance this replica streams from (a primary or a cascading replica).",
    )

    # Observed state, written by health polling and by jobs.
    online = models.BooleanField(null=True, blank=True, help_text="Blank: not known yet.")
    last_lsn = models.CharField(
        "last LSN",
        max_length=17,
        blank=True,
        validators=[validate_lsn],
        help_text="Current WAL location on a primary, last replayed one on a replica.",
    )
    lag_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    lag_seconds = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0)])
    last_checked = models.DateTimeField(null=True, blank=True)
    receive_lsn = models.CharField(
        "received LSN",
        max_length=17,
        blank=True,
        validators=[validate_lsn],
        help_text="Replica: last WAL location received from its upstream.",
    )
    replay_lsn = models.CharField(
        "replayed LSN",
        max_length=17,
        blank=True,
        validators=[validate_lsn],
        help_text="Replica: last WAL location replayed.",
    )
    timeline = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="The timeline it writes on (primary) or receives (replica), as last seen.",
    )
    upstream_streaming = models.BooleanField(
        null=True,
        blank=True,
        help_text="Replica: its WAL receiver is streaming (blank: not known or a primary).",
    )
    last_error = models.CharField(
        max_length=500,
        blank=True,
        help_text="Why the last check could not reach it (blank when it answered).",
    )
    state_changed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a check last saw its online state or role change.",
    )

    # Flags a DBA (or a failover) sets; operations read them before acting.
    fenced = models.BooleanField(
        default=False,
        help_text="Never start this instance or point a vhost at it (e.g. an old primary "
        "after a failover, until it is rebuilt).",
    )
    fence_confirmed_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name="fence confirmed",
        help_text="When a job last saw this fenced instance stopped on its server and kept "
        "from starting (start.conf manual, fence marker). Blank while fenced: the fence is "
        "only in the inventory, and the health sweep keeps trying to finish it.",
    )
    needs_rebuild = models.BooleanField(
        default=False,
        help_text="Its data has diverged from the herd (e.g. an old primary); it must be "
        "rebuilt or rewound before it can follow again.",
    )
    pending_restart = models.CharField(
        max_length=500,
        blank=True,
        help_text="Settings changed in its configuration that wait for a restart "
        "(pg_settings.pending_restart), as last seen.",
    )
    settings_seen_at = models.DateTimeField(
        null=True,
        blank=True,
        verbose_name="settings gathered",
        help_text="When its non-default settings were last read from pg_settings; blank: "
        "due at the next gathering.",
    )
    needs_remaster = models.BooleanField(
        default=False,
        help_text="A switchover or failover could not repoint it (it did not answer): it "
        "still follows the old primary until it is remastered.",
    )
    rebuild_job = models.PositiveIntegerField(
        null=True,
        blank=True,
        verbose_name="rebuild incomplete (job)",
        help_text="Set by the rebuild or create job that is replacing its data directory, "
        "cleared once it streams: until then nothing starts, promotes or rewinds it.",
    )
    streams_from = models.CharField(
        max_length=300,
        blank=True,
        help_text="host:port from the replica's primary_conninfo, as last discovered; "
        "used to link it to its upstream once that instance is in the inventory.",
    )
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = InstanceQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["server", "port"],
                name="instance_unique_port_per_server",
                violation_error_message="Another instance on this server already uses this port.",
            ),
            models.CheckConstraint(
                condition=models.Q(port__gte=1, port__lte=65535),
                name="instance_port_range",
                violation_error_message="The port must be between 1 and 65535.",
            ),
            # The two rules below are also checked in clean() with friendlier messages;
            # the constraints hold them for writes that skip clean() (jobs, bulk updates).
            models.CheckConstraint(
                condition=~models.Q(role=Role.PRIMARY, upstream__isnull=False),
                name="instance_primary_has_no_upstream",
                violation_error_message="A primary has no upstream.",
            ),
            models.CheckConstraint(
                condition=~models.Q(upstream=models.F("pk")),
                name="instance_not_own_upstream",
                violation_error_message="An instance cannot be its own upstream.",
            ),
        ]
        indexes = [
            models.Index(fields=["herd", "role"], name="instance_herd_role_idx"),
        ]
        permissions = [
            ("start_instance", "Can start instances"),
            ("stop_instance", "Can stop instances"),
            ("restart_instance", "Can restart instances"),
            ("reload_instance", "Can reload instances"),
            ("promote_instance", "Can promote replicas"),
            ("rebuild_instance", "Can rebuild replicas"),
            ("remaster_instance", "Can point replicas at another upstream"),
            ("init_instance", "Can create new instances"),
            ("configure_instance", "Can change PostgreSQL settings (ALTER SYSTEM)"),
        ]

    def __str__(self) -> str:
        return f"{self.herd.name}@{self.server.hostname}:{self.port}"

    @property
    def address(self) -> str:
        """host:port, as a DBA would type it into psql."""
        return f"{self.server.hostname}:{self.port}"

    @property
    def label(self) -> str:
        """How jobs, plans, drills and errors name it: `orders on 127.0.1.2:5432`."""
        return f"{self.herd.name} on {self.address}"

    @property
    def effective_cluster_name(self) -> str:
        return self.herd.effective_cluster_name

    @property
    def effective_pg_version(self) -> int:
        return self.pg_version if self.pg_version is not None else self.herd.pg_version

    @property
    def effective_data_dir(self) -> str:
        """The data directory: the override, or the Debian layout under the herd's root."""
        if self.data_dir:
            return normalise_path(self.data_dir)
        return join_path(
            self.herd.data_root, str(self.effective_pg_version), self.effective_cluster_name
        )

    @property
    def unfinished_rebuild(self) -> str:
        """Why nothing may start or promote it, or "": its data directory is half-copied."""
        if self.rebuild_job is None:
            return ""
        return (
            f"rebuild of {self.label} did not finish (job {self.rebuild_job}): its data "
            "directory is incomplete; rebuild it again"
        )

    @property
    def is_primary(self) -> bool:
        return self.role == Role.PRIMARY

    @property
    def is_replica(self) -> bool:
        return self.role == Role.REPLICA

    def fill_from_herd(self) -> None:
        """Copy the herd's port and version into blank fields."""
        if self.herd_id is None:
            return
        if self.port is None:
            self.port = self.herd.port
        if self.pg_version is None:
            self.pg_version = self.herd.pg_version

    def clean(self) -> None:
        self.fill_from_herd()
        errors: dict[str, list[str]] = {}
        for field, message in self._topology_errors():
            errors.setdefault(field, []).append(message)
        if self.herd_id is not None and self.server_id is not None and "data_dir" not in errors:
            message = self._data_dir_clash()
            if message:
                errors.setdefault("data_dir", []).append(message)
        if self.pk is not None and self.herd_id is not None:
            message = self._dr_candidate_herd_change()
            if message:
                errors.setdefault("herd", []).append(message)
        if errors:
            raise ValidationError(errors)

    def _topology_errors(self) -> list[tuple[str, str]]:
        if self.upstream_id is None:
            return []
        if self.pk is not None and self.upstream_id == self.pk:
            return [("upstream", "An instance cannot be its own upstream.")]
        if self.role == Role.PRIMARY:
            return [
                (
                    "upstream",
                    "A primary has no upstream: clear the upstream, or change the role to replica.",
                )
            ]
        upstream = self.upstream
        if self.herd_id is not None and upstream.herd_id != self.herd_id:
            return [
                (
                    "upstream",
                    f"The upstream {upstream} belongs to herd {upstream.herd.name}, not to "
                    f"{self.herd.name}: a replica streams from an instance of its own herd.",
                )
            ]
        if self.pk is not None:
            # Follow the chain upwards: if it comes back here, replication would go round
            # in a circle and no instance in it could ever receive WAL.
            node, depth = upstream, 0
            while node is not None and depth < MAX_CASCADE_DEPTH:
                if node.upstream_id == self.pk:
                    return [
                        (
                            "upstream",
                            f"{upstream} already streams (directly or through cascading "
                            f"replicas) from this instance: that would be a replication loop.",
                        )
                    ]
                node, depth = node.upstream, depth + 1
        return []

    def _data_dir_clash(self) -> str | None:
        """Two clusters in one data directory on one server destroy each other."""
        mine = self.effective_data_dir
        others = (
            Instance.objects.filter(server_id=self.server_id)
            .exclude(pk=self.pk)
            .select_related("herd")
        )
        for other in others:
            if other.effective_data_dir == mine:
                return (
                    f"{other} already uses the data directory {mine} on this server; set a "
                    f"different data directory (or cluster name) for one of them."
                )
        return None

    def _dr_candidate_herd_change(self) -> str | None:
        candidacy = getattr(self, "dr_candidacy", None)
        if candidacy is not None and candidacy.herd_id != self.herd_id:
            return (
                f"This instance is acknowledged as a DR candidate of herd "
                f"{candidacy.herd.name}; withdraw that acknowledgement before moving it."
            )
        return None

    def save(self, *args, **kwargs) -> None:
        # Also on save, for instances created in code (discovery, tests) without clean().
        self.fill_from_herd()
        super().save(*args, **kwargs)
