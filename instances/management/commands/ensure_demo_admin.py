"""`manage.py ensure_demo_admin --password-file F`: the demo's superuser, idempotently.

The password is read from a file so that it never appears in a process list."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create or update the demo superuser 'admin' with the password in a file."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--password-file", required=True)
        parser.add_argument("--username", default="admin")

    def handle(self, password_file: str, username: str, **_options) -> None:
        try:
            password = Path(password_file).read_text().strip()
        except OSError as exc:
            raise CommandError(f"{password_file}: {exc.strerror}") from None
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"demo superuser {username} {'created' if created else 'updated'}")
