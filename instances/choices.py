"""Choices classes for instance state. Code compares against these, never bare strings.

Kept out of the models package so that pure code (planning, command builders) and the
herds app can use them without importing models: the vocabulary layer of DESIGN.md.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    """What an instance is in its herd's replication, as last recorded or discovered."""

    PRIMARY = "primary", "primary"
    REPLICA = "replica", "replica"
    # Not yet discovered, or the last probe could not tell (instance down).
    UNKNOWN = "unknown", "unknown"


class ReplicationHealth(models.TextChoices):
    """A replica's replication as the last health sweep left it (instances.health)."""

    STREAMING = "streaming", "streaming"
    LAGGING = "lagging", "lagging"
    NOT_STREAMING = "not_streaming", "not streaming"
    # Its recorded upstream is offline: nothing to stream from.
    UPSTREAM_GONE = "upstream_gone", "upstream gone"
    # It follows the wrong upstream: a switchover or failover could not repoint it, or its
    # upstream is fenced. Remaster it (to its herd's primary).
    UPSTREAM_WRONG = "upstream_wrong", "upstream wrong"
    # Offline itself, not checked yet, or the probe role may not read pg_stat_wal_receiver.
    UNKNOWN = "unknown", "unknown"


class HerdHealth(models.TextChoices):
    """A herd as a whole, worst first: the colour of its tile on the fleet dashboard.

    The order of the members is the order of severity (health_rules.herd_health decides).
    """

    # More than one primary answers as such: clients may be writing to both.
    SPLIT_BRAIN = "split_brain", "split brain"
    # Members were checked and none is a primary that answers: nothing takes writes.
    NO_PRIMARY = "no_primary", "no primary online"
    # A member is offline, or a replica does not stream (not streaming, upstream gone or
    # wrong).
    DEGRADED = "degraded", "degraded"
    LAGGING = "lagging", "lagging"
    # Some member was never checked, or its WAL receiver cannot be read.
    UNKNOWN = "unknown", "not checked"
    HEALTHY = "healthy", "healthy"
    EMPTY = "empty", "no instances"


class JobKind(models.TextChoices):
    """What a job does; a drill's kind is one of the two herd moves (SWITCHOVER, FAILOVER)."""

    DISCOVER = "discover", "discover instances"
    CHECK_SERVER = "check_server", "check SSH connection"
    START = "start", "start"
    STOP = "stop", "stop"
    RESTART = "restart", "restart"
    RELOAD = "reload", "reload"
    PROMOTE = "promote", "promote"
    SWITCHOVER = "switchover", "planned switchover"
    FAILOVER = "failover", "DR failover"
    REFRESH_DNS = "refresh_dns", "refresh DNS"
    REBUILD = "rebuild", "rebuild replica"
    REMASTER = "remaster", "remaster replica"
    INIT = "init", "create instance"
    FENCE = "fence", "fence (stop, keep from starting)"
    ROLLING_RESTART = "rolling_restart", "rolling restart"
    SET_PARAMETER = "set_parameter", "change a setting"

    @classmethod
    def drills(cls) -> tuple[JobKind, ...]:
        return (cls.SWITCHOVER, cls.FAILOVER)


class JobOrigin(models.TextChoices):
    ADMIN = "admin", "web admin"
    CLI = "cli", "management command"
    SCHEDULE = "schedule", "schedule"


class JobState(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"
    # A bug, not a refusal: an unexpected exception ended it; its traceback is kept.
    ERRORED = "errored", "errored"

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.CANCELLED, cls.ERRORED})

    @classmethod
    def retryable(cls) -> frozenset[str]:
        return frozenset({cls.FAILED, cls.CANCELLED, cls.ERRORED})

    @classmethod
    def active(cls) -> frozenset[str]:
        return frozenset({cls.QUEUED, cls.RUNNING})


class CampaignKind(models.TextChoices):
    """What a campaign does: each is an ordered set of jobs of one kind, run in waves."""

    SITE_SWITCHOVER = "site_switchover", "move to DR site"
    FAILBACK = "failback", "fail back"
    ROLLING_RESTART = "rolling_restart", "rolling restart"
    # Any bulk action a DBA wants run in waves rather than all at once.
    JOBS = "jobs", "jobs in waves"

    @classmethod
    def site_drills(cls) -> tuple[CampaignKind, ...]:
        return (cls.SITE_SWITCHOVER, cls.FAILBACK)


class CampaignState(models.TextChoices):
    """A campaign's own state; its jobs keep theirs."""

    RUNNING = "running", "running"
    # A DBA paused it: running jobs finish, no new one starts until resumed.
    PAUSED = "paused", "paused"
    # A job did not succeed and the campaign halts on failure: the rest wait, held,
    # until a DBA resumes or abandons it.
    HALTED = "halted", "halted"
    SUCCEEDED = "succeeded", "succeeded"
    # Ended with at least one job that did not succeed (it did not halt on failure).
    FAILED = "failed", "finished with failures"
    # A DBA abandoned it: its held jobs were cancelled.
    ABANDONED = "abandoned", "abandoned"

    @classmethod
    def terminal(cls) -> frozenset[str]:
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.ABANDONED})


# A remaster's upstream_id meaning "each replica's herd primary, as recorded when its job
# runs": what a DBA picks to fix many replicas of many herds at once.
HERD_PRIMARY = 0


class CopyMethod(models.TextChoices):
    """How a replica's data is brought back in line with its upstream."""

    AUTO = "auto", "auto (pg_rewind when possible)"
    PG_REWIND = "pg_rewind", "pg_rewind"
    PG_BASEBACKUP = "pg_basebackup", "pg_basebackup"
    RSYNC = "rsync", "rsync"

    @classmethod
    def requestable(cls) -> tuple[str, ...]:
        """What a DBA may ask for: pg_rewind is chosen by auto, never forced."""
        return (cls.AUTO, cls.PG_BASEBACKUP, cls.RSYNC)


class ClusterState(models.TextChoices):
    """A cluster as its server's status command (pg_ctlcluster / pg_ctl status) sees it."""

    RUNNING = "running", "running"
    STOPPED = "stopped", "stopped"
    # No cluster in its data directory, or no data directory at all.
    EMPTY = "empty", "empty"


class AuditVerb(models.TextChoices):
    """What an audit event says happened (instances.audit); one row and one log line each."""

    LOGIN = "login", "logged in"
    LOGOUT = "logout", "logged out"
    LOGIN_REFUSED = "login_refused", "login refused"
    ACTION_REFUSED = "action_refused", "action refused"
    JOB_QUEUED = "job_queued", "job queued"
    JOB_CANCELLED = "job_cancelled", "job cancelled"
    JOB_RETRIED = "job_retried", "job retried"
    ADDED = "added", "added"
    CHANGED = "changed", "changed"
    DELETED = "deleted", "deleted"
    HOST_KEY_PINNED = "host_key_pinned", "host key pinned"
    # A switchover or failover job (its own, or one of a site drill's).
    DRILL_QUEUED = "drill_queued", "drill queued"
    DRILL_ENDED = "drill_ended", "drill ended"
    # A campaign of switchovers to the DR site, or back (CampaignKind.site_drills()).
    SITE_DRILL_QUEUED = "site_drill_queued", "site drill queued"
    SITE_DRILL_ENDED = "site_drill_ended", "site drill ended"
    CAMPAIGN_QUEUED = "campaign_queued", "campaign queued"
    CAMPAIGN_ENDED = "campaign_ended", "campaign ended"
    CAMPAIGN_PAUSED = "campaign_paused", "campaign paused"
    CAMPAIGN_RESUMED = "campaign_resumed", "campaign resumed"
    CAMPAIGN_ABANDONED = "campaign_abandoned", "campaign abandoned"

    @classmethod
    def refusals(cls) -> frozenset[AuditVerb]:
        return frozenset({cls.LOGIN_REFUSED, cls.ACTION_REFUSED})

    @classmethod
    def inventory_edits(cls) -> frozenset[AuditVerb]:
        return frozenset({cls.ADDED, cls.CHANGED, cls.DELETED, cls.HOST_KEY_PINNED})
