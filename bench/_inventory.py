"""Benchmarks leave the demo's inventory as they found it.

`as_found()` notes which environments, servers, herds and instances exist, and on the
way out (a finished run, a failed goal, an exception, sys.exit) deletes every one added
since, with the jobs, steps and drills that target them. Rows that existed before are
kept as they are, and so are jobs on them: they are the audit trail. A benchmark's
discovery can add instances of clusters it did not create (the demo's own, when the
bench added the server); those go too, exactly as they were absent before.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def as_found():
    from herds.models import Drill, Environment, Herd
    from instances.models import Instance, Job, Server

    models = (Environment, Server, Herd, Instance)
    before = {m: set(m.objects.values_list("pk", flat=True)) for m in models}
    try:
        yield
    finally:
        new = {m: m.objects.exclude(pk__in=before[m]) for m in models}
        Drill.objects.filter(herd__in=new[Herd]).delete()
        Job.objects.filter(herd__in=new[Herd]).delete()
        Job.objects.filter(instance__in=new[Instance]).delete()
        Job.objects.filter(server__in=new[Server]).delete()
        new[Instance].update(upstream=None)
        new[Instance].delete()
        new[Herd].delete()
        new[Server].delete()
        new[Environment].delete()
        left = {m.__name__: m.objects.count() - len(before[m]) for m in models}
        if any(left.values()):
            print(f"bench: inventory not restored, rows left over: {left}")
        else:
            print("bench: inventory left as found")
