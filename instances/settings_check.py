"""The live check behind the "change a setting" confirmation page: each selected
instance's pg_settings row for the parameter, read at once (each bounded by
CONFIRM_PROBE_TIMEOUT), and the verdict on the value there. The jobs check again."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from instances import probe
from instances.models import Instance
from instances.settings_planning import Verdict, check


def check_all(
    instances: list[Instance], name: str, value: str
) -> list[tuple[Instance, Verdict, str]]:
    """(instance, verdict, the value it has now) for each instance, in order."""

    def one(instance: Instance):
        try:
            found = probe.setting(instance.server.hostname, instance.port, name)
        except probe.ProbeError as exc:
            reason = str(exc).split(": ", 1)[-1][:120]
            return instance, Verdict(False, f"does not answer now ({reason})"), ""
        row, _pending, shown = found if found else (None, False, "")
        return instance, check(row, name, value), shown

    if not instances:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(instances))) as pool:
        return list(pool.map(one, instances))
