"""`manage.py add_server HOST --environment ENV --fingerprint SHA256:…`

Adds a server the way the admin page does, for configuration management: fetch the host
key, compare it with the fingerprint the caller already knows (never trust on first use),
log in with the controller key, then save with the key pinned.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from herds.models import Environment
from instances import ssh
from instances.audit import changes_between, record_cli
from instances.choices import AuditVerb
from instances.models import Server


class Command(BaseCommand):
    help = "Add a server with its host key pinned after checking the expected fingerprint."

    def add_arguments(self, parser) -> None:
        parser.add_argument("hostname")
        parser.add_argument("--environment", required=True)
        parser.add_argument("--port", type=int, default=None)
        parser.add_argument("--user", default=None)
        parser.add_argument(
            "--fingerprint",
            required=True,
            help="the SHA256:… host key fingerprint you expect (ssh-keygen -lf)",
        )
        parser.add_argument(
            "--if-missing",
            action="store_true",
            help="succeed without changes if the server is already there",
        )

    def handle(
        self,
        hostname: str,
        environment: str,
        port,
        user,
        fingerprint: str,
        if_missing: bool,
        **_options,
    ) -> None:
        existing = Server.objects.filter(hostname=hostname).first()
        if existing is not None:
            if if_missing:
                self.stdout.write(f"{hostname}: already in the inventory")
                return
            raise CommandError(f"{hostname} is already in the inventory")
        env, _ = Environment.objects.get_or_create(name=environment)
        server = Server(hostname=hostname, environment=env)
        if port:
            server.ssh_port = port
        if user:
            server.ssh_user = user
        try:
            server.full_clean(exclude=["host_key_type", "host_key", "host_key_fingerprint"])
        except ValidationError as exc:
            raise CommandError(f"{hostname}: {exc.messages[0]}") from None
        try:
            key_type, key, seen = ssh.fetch_host_key(hostname, server.ssh_port)
        except ssh.SSHError as exc:
            raise CommandError(str(exc)) from None
        if seen != fingerprint.strip():
            raise CommandError(
                f"{hostname} presented host key {seen}, not the expected "
                f"{fingerprint}: nothing saved"
            )
        server.host_key_type, server.host_key, server.host_key_fingerprint = key_type, key, seen
        try:
            ssh.check_login(server)
        except ssh.SSHError as exc:
            raise CommandError(str(exc)) from None
        server.full_clean()
        server.save()
        fields = ["hostname", "environment", "ssh_port", "ssh_user", "host_key_fingerprint"]
        record_cli(
            AuditVerb.ADDED,
            f"server {hostname} added to {env.name} by (management command)",
            obj=server,
            changes=changes_between(None, server, fields),
        )
        record_cli(
            AuditVerb.HOST_KEY_PINNED,
            f"(management command) pinned the {key_type} host key of {hostname}: none → {seen} "
            "(the expected fingerprint)",
            obj=server,
            changes={"host_key_fingerprint": [None, seen]},
        )
        self.stdout.write(f"{hostname}: added to {env.name}, host key {seen} pinned")
