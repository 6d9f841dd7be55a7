"""Forms that pin a server's SSH host key: adding a server, and re-pinning one.

This module is the one place outside tasks allowed to call the SSH runner, and only from
these forms' clean(): pinning a host key means a DBA looks at the key the server presents
*now* and confirms it, so it cannot be queued for later like other operations. Admin
classes use these forms and never import instances.ssh themselves.

Both flows take two submits:

1. The DBA submits hostname, port and user. clean() fetches the host key the server
   presents, carries it in hidden fields, and stops with its fingerprint and the command
   that prints the same fingerprint on the server.
2. The DBA compares, ticks "I checked this fingerprint" and submits again. clean() logs
   in with the controller's key, trusting only the carried host key; only if that works
   is the server saved with the key pinned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from instances import ssh
from instances.models import Server
from instances.validators import normalise_hostname, sha256_fingerprint

# Where each key type lives on a Debian server, for the "check it yourself" command.
_HOST_KEY_FILES = {
    "ssh-ed25519": "/etc/ssh/ssh_host_ed25519_key.pub",
    "ecdsa-sha2-nistp256": "/etc/ssh/ssh_host_ecdsa_key.pub",
    "ecdsa-sha2-nistp384": "/etc/ssh/ssh_host_ecdsa_key.pub",
    "ecdsa-sha2-nistp521": "/etc/ssh/ssh_host_ecdsa_key.pub",
    "ssh-rsa": "/etc/ssh/ssh_host_rsa_key.pub",
}
_CARRIED_FIELDS = ("host_key_type", "host_key", "host_key_fingerprint", "key_source")


@dataclass(frozen=True)
class ControllerKey:
    """The controller's public SSH key, or why it cannot be shown."""

    path: str
    text: str | None
    problem: str | None


def controller_public_key() -> ControllerKey:
    """The controller's public key (settings.SSH_PRIVATE_KEY + ".pub"), to install in
    the server's authorized_keys; the runner checks it matches the private key."""
    path = f"{settings.SSH_PRIVATE_KEY}.pub"
    try:
        return ControllerKey(path, ssh.controller_public_key(), None)
    except ssh.SSHError as exc:
        return ControllerKey(
            path,
            None,
            f"The controller's public key {path} cannot be shown: {exc}. Create it with "
            f"`ssh-keygen -y -f {settings.SSH_PRIVATE_KEY} > {path}`, or point "
            f"ELEPHAAS_SSH_KEY at the right private key. ElepHaaS cannot log in to a server "
            f"until this key is in ~postgres/.ssh/authorized_keys there.",
        )


def host_key_check_command(key_type: str) -> str:
    """What the DBA runs on the server to see the fingerprint it should present."""
    return f"ssh-keygen -lf {_HOST_KEY_FILES.get(key_type, '/etc/ssh/ssh_host_*_key.pub')}"


class _HostKeyConfirmation(forms.Form):
    """Hidden fields carrying a fetched host key between the two submits, and the tick box."""

    host_key_type = forms.CharField(required=False, widget=forms.HiddenInput)
    host_key = forms.CharField(required=False, widget=forms.HiddenInput)
    host_key_fingerprint = forms.CharField(required=False, widget=forms.HiddenInput)
    # host:port the carried key was fetched from: if the DBA edits either between the two
    # submits, the key they confirmed belongs to another address and is fetched again.
    key_source = forms.CharField(required=False, widget=forms.HiddenInput)
    fingerprint_checked = forms.BooleanField(
        required=False,
        label="I checked this fingerprint",
        help_text="against the output of the command shown above, run on the server itself.",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not (self.data.get("host_key") if self.is_bound else None):
            # Nothing to confirm before a key has been fetched.
            self.fields["fingerprint_checked"].widget = forms.HiddenInput()

    @property
    def fetched_key(self) -> tuple[str, str] | None:
        """(type, fingerprint) of the key awaiting confirmation, for the template."""
        if not self.is_bound or not self.data.get("host_key"):
            return None
        return self.data.get("host_key_type", ""), self.data.get("host_key_fingerprint", "")

    @property
    def check_command(self) -> str | None:
        fetched = self.fetched_key
        return host_key_check_command(fetched[0]) if fetched else None

    def _carried_key(self, source: str) -> tuple[str, str, str] | None:
        data = self.cleaned_data
        if data.get("key_source") != source or not data.get("host_key"):
            return None
        # The hidden fields come back from the browser: if the fingerprint shown is not the
        # key's own, what the DBA confirmed is not what would be pinned. Fetch again.
        try:
            if sha256_fingerprint(data["host_key"]) != data.get("host_key_fingerprint"):
                return None
        except ValidationError:
            return None
        return data["host_key_type"], data["host_key"], data["host_key_fingerprint"]

    @staticmethod
    def _fetch(hostname: str, port: int) -> tuple[str, str, str]:
        try:
            return ssh.fetch_host_key(hostname, port, timeout=settings.SSH_CONNECT_TIMEOUT)
        except ssh.SSHError as exc:
            raise ValidationError(str(exc), code="ssh") from None

    def _ask(self, fetched: tuple[str, str, str], source: str, intro: str) -> None:
        """Carry a fetched key to the next submit, and stop to ask for confirmation."""
        key_type, key, fingerprint = fetched
        data = self.data.copy()
        # Item assignment, not update(): QueryDict.update() appends to the old values.
        data["host_key_type"] = key_type
        data["host_key"] = key
        data["host_key_fingerprint"] = fingerprint
        data["key_source"] = source
        # A fresh key needs a fresh confirmation, even if the box was ticked for another.
        data.pop("fingerprint_checked", None)
        self.data = data
        self.fields["fingerprint_checked"].widget = forms.CheckboxInput()
        raise ValidationError(
            "%(intro)s presents the %(type)s host key %(fingerprint)s. Run `%(command)s` on "
            "the server; if it prints the same fingerprint, tick “I checked this "
            "fingerprint” and save again.",
            code="confirm_fingerprint",
            params={
                "intro": intro,
                "type": key_type,
                "fingerprint": fingerprint,
                "command": host_key_check_command(key_type),
            },
        )

    def _require_tick(self) -> None:
        if not self.cleaned_data.get("fingerprint_checked"):
            fetched = self.fetched_key or ("", "")
            raise ValidationError(
                "Tick “I checked this fingerprint” once you have compared %(fingerprint)s "
                "with the server's own.",
                code="confirm_fingerprint",
                params={"fingerprint": fetched[1]},
            )

    @staticmethod
    def _check_login(server: Server) -> None:
        try:
            ssh.check_login(server)
        except ssh.SSHError as exc:
            raise ValidationError(
                "%(error)s — nothing was saved.", code="ssh", params={"error": str(exc)}
            ) from None


class ServerAddForm(_HostKeyConfirmation, forms.ModelForm):
    """Add a server: fetch and confirm its host key, prove the login works, then save."""

    class Meta:
        model = Server
        fields = ["hostname", "environment", "ssh_port", "ssh_user", "notes"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Model validators normally run after clean() (in _post_clean); these values reach
        # the network inside clean(), so they are checked first, as form field validators.
        for name in ("hostname", "ssh_port", "ssh_user"):
            self.fields[name].validators.extend(Server._meta.get_field(name).validators)

    def clean_hostname(self) -> str:
        hostname = normalise_hostname(self.cleaned_data["hostname"])
        # Checked here as well as by the unique constraint, to refuse before any SSH.
        if Server.objects.filter(hostname=hostname).exists():
            raise ValidationError("A server with this host name already exists.", code="unique")
        return hostname

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.errors:
            # Never open a connection on the strength of a half-valid form.
            return cleaned
        hostname, port, user = cleaned["hostname"], cleaned["ssh_port"], cleaned["ssh_user"]
        source = f"{hostname}:{port}"
        carried = self._carried_key(source)
        if carried is None:
            self._ask(self._fetch(hostname, port), source, f"{hostname} (port {port})")
        self._require_tick()
        key_type, key, fingerprint = carried
        candidate = Server(
            hostname=hostname,
            ssh_port=port,
            ssh_user=user,
            host_key_type=key_type,
            host_key=key,
            host_key_fingerprint=fingerprint,
        )
        self._check_login(candidate)
        # Not in Meta.fields (the DBA never types them), so set on the instance directly;
        # Server.clean() then checks the fingerprint really is the key's.
        self.instance.host_key_type = key_type
        self.instance.host_key = key
        self.instance.host_key_fingerprint = fingerprint
        self.instance.last_contact = timezone.now()
        return cleaned


class HostKeyRepinForm(_HostKeyConfirmation):
    """Replace a server's pinned host key after the server's key changed (reinstall...)."""

    def __init__(self, *args, server: Server, **kwargs) -> None:
        self.server = server
        super().__init__(*args, **kwargs)

    def clean(self) -> dict:
        cleaned = super().clean()
        server = self.server
        source = f"{server.hostname}:{server.ssh_port}"
        carried = self._carried_key(source)
        if carried is None:
            self._fetch_new_key(source)
        self._require_tick()
        key_type, key, fingerprint = carried
        candidate = copy.copy(server)
        candidate.host_key_type = key_type
        candidate.host_key = key
        candidate.host_key_fingerprint = fingerprint
        self._check_login(candidate)
        return cleaned

    def _fetch_new_key(self, source: str) -> None:
        server = self.server
        current = self._fetch(server.hostname, server.ssh_port)
        if server.host_key and current[1] == server.host_key:
            raise ValidationError(
                "%(server)s still presents the pinned key %(fingerprint)s: nothing to re-pin.",
                code="unchanged",
                params={"server": server.hostname, "fingerprint": server.host_key_fingerprint},
            )
        self._ask(current, source, f"{server.hostname} (port {server.ssh_port}) now")

    def save(self) -> Server:
        """Pin the confirmed key; call only after is_valid()."""
        server = self.server
        server.host_key_type = self.cleaned_data["host_key_type"]
        server.host_key = self.cleaned_data["host_key"]
        server.host_key_fingerprint = self.cleaned_data["host_key_fingerprint"]
        server.last_contact = timezone.now()
        server.full_clean()
        server.save(
            update_fields=[
                "host_key_type",
                "host_key",
                "host_key_fingerprint",
                "last_contact",
                "updated_at",
            ]
        )
        return server
