"""Models of the instances app: a package, one module per model."""

from instances.choices import Role
from instances.models.audit import AuditEvent
from instances.models.campaign import Campaign
from instances.models.instance import Instance, InstanceQuerySet, correlated_count
from instances.models.job import Job, JobKind, JobOrigin, JobQuerySet, JobState, JobStep
from instances.models.sample import HealthSample
from instances.models.server import Server, default_ssh_port, default_ssh_user
from instances.models.setting import InstanceSetting

__all__ = [
    "AuditEvent",
    "Campaign",
    "HealthSample",
    "Instance",
    "Job",
    "JobKind",
    "JobOrigin",
    "JobQuerySet",
    "JobState",
    "JobStep",
    "InstanceQuerySet",
    "InstanceSetting",
    "Role",
    "Server",
    "correlated_count",
    "default_ssh_port",
    "default_ssh_user",
]
