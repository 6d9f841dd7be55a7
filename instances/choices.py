"""Choices classes for instance state. Code compares against these, never bare strings.

Kept out of the models package so that pure code (planning, command builders) and the
herds app can use them without importing models.
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
    # Offline itself, not checked yet, or the probe role may not read pg_stat_wal_receiver.
    UNKNOWN = "unknown", "unknown"
