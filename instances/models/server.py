"""A managed machine reached over SSH, with its pinned host key."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from instances.validators import (
    host_key_blob_type,
    normalise_hostname,
    sha256_fingerprint,
    validate_host_key,
    validate_host_key_fingerprint,
    validate_host_key_type,
    validate_hostname,
    validate_port,
    validate_unix_user,
)


# Callables rather than values so that the defaults follow the settings at run time and a
# changed ELEPHAAS_SSH_PORT does not produce a new migration.
def default_ssh_port() -> int:
    return settings.SSH_DEFAULT_PORT


def default_ssh_user() -> str:
    return settings.SSH_DEFAULT_USER


class Server(models.Model):
    """A machine ElepHaaS logs in to as `ssh_user`, trusting only the pinned host key.

    The attribute names hostname, ssh_port, ssh_user, host_key_type and host_key are a
    contract with the SSH runner (instances.ssh), which reads them duck-typed.
    """

    hostname = models.CharField(
        max_length=253,
        unique=True,
        validators=[validate_hostname],
        help_text="Host name or IP address ElepHaaS connects to over SSH.",
    )
    environment = models.ForeignKey(
        "herds.Environment", on_delete=models.PROTECT, related_name="servers"
    )
    ssh_port = models.PositiveIntegerField(
        "SSH port", default=default_ssh_port, validators=[validate_port]
    )
    ssh_user = models.CharField(
        "SSH user",
        max_length=32,
        default=default_ssh_user,
        validators=[validate_unix_user],
        help_text="Account that owns the PostgreSQL clusters (usually postgres).",
    )
    host_key_type = models.CharField(max_length=32, blank=True, validators=[validate_host_key_type])
    host_key = models.TextField(
        blank=True,
        validators=[validate_host_key],
        help_text="Pinned host key (base64); ElepHaaS refuses any other key from this host.",
    )
    host_key_fingerprint = models.CharField(
        max_length=64, blank=True, validators=[validate_host_key_fingerprint]
    )
    notes = models.TextField(blank=True)
    last_contact = models.DateTimeField(
        null=True, blank=True, help_text="Last successful SSH login."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["hostname"]
        permissions = [
            ("pin_host_key", "Can pin or re-pin a server's SSH host key"),
            ("discover_server", "Can discover instances on servers and check connections"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ssh_port__gte=1, ssh_port__lte=65535),
                name="server_ssh_port_range",
                violation_error_message="The SSH port must be between 1 and 65535.",
            ),
        ]

    def __str__(self) -> str:
        return self.hostname

    @property
    def is_pinned(self) -> bool:
        """Whether a host key is pinned; the runner refuses to connect to an unpinned server."""
        return bool(self.host_key)

    def clean(self) -> None:
        if self.hostname:
            self.hostname = normalise_hostname(self.hostname)
        self._clean_host_key()

    def _clean_host_key(self) -> None:
        fields = (self.host_key_type, self.host_key, self.host_key_fingerprint)
        if not any(fields):
            return
        if not all(fields):
            raise ValidationError(
                "Host key type, key and fingerprint go together: set all three (by pinning "
                "the key from the server) or none."
            )
        try:
            actual_fingerprint = sha256_fingerprint(self.host_key)
            blob_type = host_key_blob_type(self.host_key)
        except ValidationError as exc:
            raise ValidationError({"host_key": exc.messages}) from None
        # A fingerprint that does not match its key means the fields were copied from two
        # different places; pinning either would trust a key nobody checked.
        if actual_fingerprint != self.host_key_fingerprint:
            raise ValidationError(
                {
                    "host_key_fingerprint": (
                        f"This fingerprint does not match the host key, whose fingerprint "
                        f"is {actual_fingerprint}."
                    )
                }
            )
        if blob_type != self.host_key_type:
            raise ValidationError(
                {"host_key_type": f"The host key is a {blob_type} key, not {self.host_key_type}."}
            )

    def save(self, *args, **kwargs) -> None:
        # Also here, not only in clean(): code paths that skip full_clean (discovery,
        # scripts) must not create a second row for "DB1" next to "db1".
        if self.hostname:
            self.hostname = normalise_hostname(self.hostname)
        super().save(*args, **kwargs)
