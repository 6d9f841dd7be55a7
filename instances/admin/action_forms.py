"""Options on the confirmation pages of instance actions (pure form validation)."""

from __future__ import annotations

from django import forms

from instances.commands import STOP_MODES

MODE_CHOICES = [
    ("fast", "fast: roll back open transactions, disconnect clients, shut down cleanly"),
    ("immediate", "immediate: abort without a shutdown checkpoint (crash recovery at start)"),
    ("smart", "smart: wait for every client to disconnect"),
]
assert {m for m, _ in MODE_CHOICES} == set(STOP_MODES)


class ActionOptionsForm(forms.Form):
    def __init__(self, *args, targets=(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.targets = list(targets)


class StopOptionsForm(ActionOptionsForm):
    mode = forms.ChoiceField(choices=MODE_CHOICES, initial="fast", widget=forms.RadioSelect)


class PromoteOptionsForm(ActionOptionsForm):
    allow_two_primaries = forms.BooleanField(
        required=False,
        label="I accept two primaries",
        help_text="Needed when a selected replica's herd still has a primary recorded online: "
        "both will accept writes (split-brain) until one is stopped.",
    )

    def clean(self):
        data = super().clean()
        risky = [t for t in self.targets if getattr(t, "live_primary_elsewhere", None)]
        if risky and not data.get("allow_two_primaries"):
            raise forms.ValidationError(
                "%(n)d selected replica(s) belong to a herd whose primary is recorded online "
                "(%(which)s): tick 'I accept two primaries' or stop that primary first.",
                params={
                    "n": len(risky),
                    "which": ", ".join(str(t.live_primary_elsewhere) for t in risky),
                },
            )
        return data
