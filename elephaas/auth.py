"""Logins: LDAP accounts with roles mirrored from LDAP groups, local break-glass accounts.

Who is checked where:

1. A username that is a local Django account with a usable password (the break-glass
   superuser) is checked by Django only: its password is never sent to LDAP, and it logs
   in at once even when LDAP is dead or hung.
2. Everyone else is checked by LDAP (`ElephaasLDAPBackend`, settings `AUTH_LDAP_*`). At
   each successful login their LDAP groups are mirrored onto the roles (the Django groups
   `viewer`, `operator`, `dba` made by herds/migrations/0004_roles.py) and onto
   `is_superuser`; any role makes them staff. Losing an LDAP group loses the role at the
   next login.
3. An unreachable LDAP server fails the login within ELEPHAAS_LDAP_TIMEOUT seconds and
   the login page says so.

Every login, refused login and logout is an audit event (instances.audit: a row of the
audit trail and a line on the `elephaas.audit` logger) with the username and the remote
address, never the password.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import ldap
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import transaction
from django.dispatch import receiver
from django_auth_ldap.backend import LDAPBackend, ldap_error

from instances.audit import record, remote_addr
from instances.choices import AuditVerb

audit = logging.getLogger("elephaas.audit")

# Errors meaning "no answer from the server", as opposed to an answer we did not like.
UNREACHABLE = (ldap.SERVER_DOWN, ldap.TIMEOUT, ldap.CONNECT_ERROR)
UNREACHABLE_MESSAGE = (
    "The LDAP server is unreachable, so directory accounts cannot log in right now; "
    "local accounts still work."
)
LDAP_ERROR_MESSAGE = (
    "The LDAP server could not check this login (it answered with an error); "
    "local accounts still work."
)


def role_groups() -> dict[str, str]:
    """Role (Django group name) → LDAP group name (cn), from settings; empty names skipped."""
    return {role: name for role, name in settings.LDAP_ROLE_GROUPS.items() if name}


def mirror_roles(user, ldap_group_names: Iterable[str]) -> set[str]:
    """Give `user` exactly the roles its LDAP groups grant; return the role names.

    Only the role groups are touched: other Django groups a local admin gave the user stay.
    """
    from django.contrib.auth.models import Group

    member_of = {name.lower() for name in ldap_group_names}
    mapping = role_groups()
    wanted = {role for role, ldap_name in mapping.items() if ldap_name.lower() in member_of}
    superuser_group = settings.LDAP_SUPERUSER_GROUP
    is_superuser = bool(superuser_group) and superuser_group.lower() in member_of

    with transaction.atomic():
        groups = {group.name: group for group in Group.objects.filter(name__in=mapping)}
        missing = wanted - groups.keys()
        if missing:
            audit.error(
                "roles %s of %r do not exist as Django groups (run `manage.py migrate`)",
                ", ".join(sorted(missing)),
                user.get_username(),
            )
        user.is_superuser = is_superuser
        user.is_staff = bool(wanted) or is_superuser
        user.save(update_fields=["is_staff", "is_superuser"])
        user.groups.remove(*(group for name, group in groups.items() if name not in wanted))
        user.groups.add(*(group for name, group in groups.items() if name in wanted))
    return wanted


class ElephaasLDAPBackend(LDAPBackend):
    """django-auth-ldap, skipping local accounts and mirroring LDAP groups onto roles."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None or self._is_local_account(username):
            return None
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            return None
        try:
            ldap_groups = user.ldap_user.group_names
        except ldap.LDAPError as exc:
            # Without the groups we cannot tell which roles remain: refuse rather than
            # let someone in with roles LDAP may have taken away.
            ldap_error.send(
                type(self), context="mirror_roles", user=user, request=request, exception=exc
            )
            return None
        roles = mirror_roles(user, ldap_groups)
        if not user.is_staff:
            # Django's own login form then refuses a non-staff user without a signal: this
            # is the refused login's one record.
            record(
                AuditVerb.LOGIN_REFUSED,
                f"login refused: {user.get_username()!r} from {remote_addr(request)} is in "
                "LDAP but in no ElepHaaS group",
                username=user.get_username(),
                remote=remote_addr(request),
                obj=user,
            )
        else:
            audit.info(
                "LDAP roles of %r: %s%s",
                user.get_username(),
                ", ".join(sorted(roles)) or "none",
                " (superuser)" if user.is_superuser else "",
            )
        return user

    def _is_local_account(self, username: str) -> bool:
        model = get_user_model()
        lookup = {f"{model.USERNAME_FIELD}__iexact": username.strip()}
        user = model._default_manager.filter(**lookup).first()
        return user is not None and user.has_usable_password()


@receiver(ldap_error)
def note_ldap_error(sender, context, user, request, exception, **kwargs) -> None:
    unreachable = isinstance(exception, UNREACHABLE)
    username = user.get_username() if user is not None else None
    if username is None and request is not None:
        username = getattr(request, "POST", {}).get("username")
    audit.error(
        "LDAP %s while checking %r from %s (%s): %s",
        "unreachable" if unreachable else "error",
        username,
        remote_addr(request),
        context,
        _ldap_reason(exception),
    )
    if request is None or getattr(request, "_elephaas_ldap_error_shown", False):
        return
    request._elephaas_ldap_error_shown = True
    # The refused login's audit event (audit_login_failed, just after) says why.
    request._elephaas_ldap_error = "LDAP unreachable" if unreachable else "LDAP error"
    messages.error(
        request,
        UNREACHABLE_MESSAGE if unreachable else LDAP_ERROR_MESSAGE,
        fail_silently=True,
    )


def _ldap_reason(exception: ldap.LDAPError) -> str:
    detail = exception.args[0] if exception.args else None
    if isinstance(detail, dict):
        text = "; ".join(str(detail[key]) for key in ("desc", "info") if detail.get(key))
        if text:
            return text
    if isinstance(exception, ldap.TIMEOUT):
        return "no answer within the timeout"
    return str(exception) or type(exception).__name__


@receiver(user_logged_in)
def audit_login(sender, request, user, **kwargs) -> None:
    backend = getattr(user, "backend", "") or ""
    where = remote_addr(request)
    record(
        AuditVerb.LOGIN,
        f"login: {user.get_username()!r} from {where} via "
        + ("LDAP" if backend.endswith("LDAPBackend") else "local account"),
        username=user.get_username(),
        remote=where,
        obj=user,
    )


@receiver(user_login_failed)
def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # `credentials` has the password already replaced by stars; only the name is kept.
    username = str(credentials.get("username") or "")
    where = remote_addr(request)
    why = getattr(request, "_elephaas_ldap_error", "")
    record(
        AuditVerb.LOGIN_REFUSED,
        f"login refused: {username!r} from {where}" + (f" ({why})" if why else ""),
        username=username,
        remote=where,
    )


@receiver(user_logged_out)
def audit_logout(sender, request, user, **kwargs) -> None:
    if user is not None:
        where = remote_addr(request)
        record(
            AuditVerb.LOGOUT,
            f"logout: {user.get_username()!r} from {where}",
            username=user.get_username(),
            remote=where,
            obj=user,
        )
