"""The roles: Django groups `viewer`, `operator` and `dba` with their permissions.

LDAP groups are mirrored onto these at login (elephaas/auth.py). The lists are frozen
here, as a migration must be; a later model or permission gets its own migration.
"""

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLE_APPS = ("herds", "instances")

OPERATOR_PERMISSIONS = [
    ("instances", "start_instance"),
    ("instances", "stop_instance"),
    ("instances", "restart_instance"),
    ("instances", "reload_instance"),
    ("instances", "discover_server"),
    ("instances", "cancel_job"),
]

DBA_PERMISSIONS = [
    ("instances", "promote_instance"),
    ("instances", "rebuild_instance"),
    ("instances", "remaster_instance"),
    ("instances", "init_instance"),
    ("instances", "pin_host_key"),
    ("instances", "retry_job"),
    ("instances", "cancel_any_job"),
    ("herds", "switchover_herd"),
    ("herds", "failover_herd"),
    ("herds", "refresh_dns"),
] + [
    (app, f"{verb}_{model}")
    for app, model in [
        ("herds", "environment"),
        ("herds", "herd"),
        ("herds", "drcandidate"),
        ("instances", "server"),
        ("instances", "instance"),
    ]
    for verb in ("add", "change", "delete")
]

ROLE_NAMES = ("viewer", "operator", "dba")


def create_roles(apps, schema_editor):
    db = schema_editor.connection.alias
    # Permissions are normally made by post_migrate, after every migration has run; on a
    # fresh database they do not exist yet. The real app config is passed because
    # create_permissions skips configs without a models module, which historical ones
    # lack; the models it reads still come from the historical `apps`.
    for label in ROLE_APPS:
        create_permissions(global_apps.get_app_config(label), verbosity=0, using=db, apps=apps)

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    by_key = {
        (p.content_type.app_label, p.codename): p
        for p in Permission.objects.using(db)
        .filter(content_type__app_label__in=ROLE_APPS)
        .select_related("content_type")
    }
    viewer = [p for (_app, codename), p in by_key.items() if codename.startswith("view_")]

    def lookup(keys):
        missing = [f"{app}.{codename}" for app, codename in keys if (app, codename) not in by_key]
        if missing:
            raise RuntimeError(f"permissions missing for the roles: {', '.join(missing)}")
        return [by_key[key] for key in keys]

    operator = viewer + lookup(OPERATOR_PERMISSIONS)
    dba = operator + lookup(DBA_PERMISSIONS)
    for name, permissions in (("viewer", viewer), ("operator", operator), ("dba", dba)):
        group, _ = Group.objects.using(db).get_or_create(name=name)
        group.permissions.set(permissions)


def remove_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name__in=ROLE_NAMES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("herds", "0003_permissions_and_health"),
        ("instances", "0003_permissions_and_health"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
