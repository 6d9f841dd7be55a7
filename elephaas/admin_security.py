"""Refusals are loud and edits are recorded: the audit trail of the admin.

Django offers each user only the actions their permissions allow, but a POST naming
another action (a crafted request, a stale page after a role was taken away) only gets
"No action selected." back. An operator then cannot tell that something was refused, and
nobody learns that someone tried. With this mixin the request is answered 403 and the
attempt is an audit event (instances.audit: a row and an `elephaas.audit` line), as is a
POST to an add, change or delete page the user may not use.

Every add, change and delete made through a ModelAdmin with the mixin (the inventory:
environments, herds and their DR candidates, servers, instances) is an audit event too,
naming the fields that changed with their old and new values.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import models
from django.http import HttpRequest

from instances.audit import (
    ObjectRef,
    changes_between,
    describe_changes,
    record_request,
    ref,
    remote_addr,
    shown,
    username_of,
)
from instances.choices import AuditVerb


class Refused(PermissionDenied):
    """A 403 whose audit event is already written."""


def refuse(request: HttpRequest, what: str, permission: str) -> None:
    """Answer 403 to a request lacking `permission`, and record the attempt: for admin
    views that are not actions (the mixin below covers those)."""
    record_request(
        request,
        AuditVerb.ACTION_REFUSED,
        f"{what} refused: {username_of(request.user)!r} from {remote_addr(request)} "
        f"lacks {permission}",
    )
    raise Refused(f"You may not {what}.")


def _fields_of(model: type[models.Model], names) -> list[str]:
    """The names that are concrete, non-m2m fields of `model` (a form may have others)."""
    concrete = {f.name for f in model._meta.concrete_fields}
    return [name for name in names if name in concrete]


def _label(obj: models.Model) -> str:
    return f"{obj._meta.verbose_name} {obj}"


class ReadOnlyAdminMixin:
    """Rows only ElepHaaS writes (jobs, campaigns, drills, DR pairs, gathered settings,
    the audit trail): seen, never added, changed or deleted through the admin."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class AuditedActionsMixin:
    """Put before admin.ModelAdmin: `class JobAdmin(AuditedActionsMixin, admin.ModelAdmin)`."""

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if request.method == "POST":
            self.refuse_unpermitted_action(request)
        return super().changelist_view(request, extra_context)

    def response_action(self, request: HttpRequest, queryset):
        # Also here for subclasses that call response_action from their own views.
        self.refuse_unpermitted_action(request)
        return super().response_action(request, queryset)

    def refuse_unpermitted_action(self, request: HttpRequest) -> None:
        # Every non-empty name counts, not only the one `index` picks: the form offers
        # permitted actions only, so an honest page never posts anything else.
        posted = [name for name in request.POST.getlist("action") if name]
        if not posted:
            return
        permitted = self.get_actions(request)
        refused = [name for name in posted if name not in permitted]
        if not refused:
            return
        meta = self.model._meta
        record_request(
            request,
            AuditVerb.ACTION_REFUSED,
            f"action refused: {username_of(request.user)!r} from {remote_addr(request)} "
            f"tried {', '.join(repr(name) for name in refused)} on "
            f"{meta.app_label}.{meta.model_name} (selected: "
            f"{request.POST.getlist('_selected_action')[:20]!r}): not permitted",
            obj=self.model,
        )
        raise Refused(f"You may not use the action {refused[0]!r} here.")

    # --- add, change and delete pages ----------------------------------------------------

    def changeform_view(
        self, request: HttpRequest, object_id=None, form_url="", extra_context=None
    ):
        # Django raises the 403 inside the page's transaction; it is recorded here, once
        # that transaction has been rolled back, so that the record stays.
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except PermissionDenied as exc:
            self._record_refused_page(request, exc, "add" if object_id is None else "change")
            raise

    def delete_view(self, request: HttpRequest, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except PermissionDenied as exc:
            self._record_refused_page(request, exc, "delete")
            raise

    def _record_refused_page(self, request: HttpRequest, exc: Exception, verb: str) -> None:
        # A GET of a page one may not use is a link followed, not an attempt to change.
        if request.method != "POST" or isinstance(exc, Refused):
            return
        meta = self.model._meta
        record_request(
            request,
            AuditVerb.ACTION_REFUSED,
            f"{verb} refused: {username_of(request.user)!r} from {remote_addr(request)} "
            f"may not {verb} {meta.verbose_name_plural}",
            obj=self.model,
        )

    def save_model(self, request: HttpRequest, obj, form, change: bool) -> None:
        # The stored row, read before the save: the form has already put the new values on
        # `obj`.
        before = type(obj)._default_manager.filter(pk=obj.pk).first() if change else None
        super().save_model(request, obj, form, change)
        fields = _fields_of(type(obj), form.changed_data if change else form.fields)
        changes = changes_between(before, obj, fields)
        if change and not changes:
            return
        self.record_edit(request, AuditVerb.CHANGED if change else AuditVerb.ADDED, obj, changes)

    def delete_model(self, request: HttpRequest, obj) -> None:
        gone = ref(obj)  # before the delete, which clears its key
        super().delete_model(request, obj)
        self.record_edit(request, AuditVerb.DELETED, obj, {}, target=gone)

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        """The "delete selected" action: one event per object deleted."""
        doomed = [(obj, ref(obj)) for obj in queryset]
        super().delete_queryset(request, queryset)
        for obj, gone in doomed:
            self.record_edit(request, AuditVerb.DELETED, obj, {}, target=gone)

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        """Inline rows (a herd's DR candidates) added, changed or deleted on the page."""
        super().save_related(request, form, formsets, change)
        for formset in formsets:
            initial = {id(f.instance): f.initial for f in formset.forms}
            for obj in getattr(formset, "new_objects", []):
                fields = _fields_of(type(obj), formset.form.base_fields)
                self.record_edit(request, AuditVerb.ADDED, obj, changes_between(None, obj, fields))
            for obj, changed in getattr(formset, "changed_objects", []):
                old = initial.get(id(obj), {})
                changes = {
                    name: [_initial_shown(obj, name, old.get(name)), shown(_now(obj, name))]
                    for name in _fields_of(type(obj), changed)
                }
                self.record_edit(request, AuditVerb.CHANGED, obj, changes)
            for obj in getattr(formset, "deleted_objects", []):
                # Deleted by save_formset already: its key is gone, its name is left.
                self.record_edit(request, AuditVerb.DELETED, obj, {})

    def record_edit(
        self,
        request: HttpRequest,
        verb: AuditVerb,
        obj,
        changes: dict[str, list],
        *,
        target: ObjectRef | None = None,
    ) -> None:
        target = target or ref(obj)
        what = f"{obj._meta.verbose_name} {target.repr}"
        detail = f": {describe_changes(changes)}" if changes else ""
        record_request(
            request,
            verb,
            f"{username_of(request.user)!r} from {remote_addr(request)} "
            f"{AuditVerb(verb).label} {what}{detail}",
            obj=target,
            changes=changes,
        )


def _now(obj: models.Model, name: str):
    field = obj._meta.get_field(name)
    if field.is_relation and field.many_to_one:
        return getattr(obj, name) if getattr(obj, field.attname) is not None else None
    return getattr(obj, name)


def _initial_shown(obj: models.Model, name: str, raw) -> str | None:
    """A form's initial value as the trail shows it: a related row's name, not its key."""
    field = obj._meta.get_field(name)
    if raw is not None and field.is_relation and field.many_to_one:
        return shown(field.related_model._default_manager.filter(pk=raw).first())
    return shown(raw)
