"""Full rebuild of a replica through ElepHaaS vs the same steps typed by hand.

One herd (primary srv1, replica srv2) holding a pgbench database (scale 20 by default,
about 300 MB: small enough to run in a few minutes). Each round rebuilds the replica:

- by hand, on srv2 as postgres: stop (fast), empty the data directory, pg_basebackup
  (stream WAL, fast checkpoint), standby.signal + primary_conninfo, start, wait until it
  streams — what a DBA would type;
- through ElepHaaS: a REBUILD job with method pg_basebackup (and, for information, rsync
  and auto, which picks pg_rewind here), run with `runner.run_inline` — the same job code
  the worker runs, without the broker, so the lab's long-running worker (which may predate
  this module) is not needed.

Printed: median wall time of each, the copy step alone, and ElepHaaS / by hand (goal
<= 1.25x: the job adds status checks, a control-file read, progress polling and steps).

    python -m lab up && .venv/bin/python bench/bench_rebuild.py [--scale 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

from herds.models import Environment, Herd  # noqa: E402
from instances import probe  # noqa: E402
from instances.jobs import queue, runner  # noqa: E402
from instances.models import Instance, Job, JobKind, JobState, Server  # noqa: E402
from lab import fleet, state  # noqa: E402
from lab import herd as lab_herd  # noqa: E402

NAME, PORT = "rbbench", 5539
VERSION = fleet.pg_version()
PGBIN = Path(f"/usr/lib/postgresql/{VERSION}/bin")
DATA_DIR = f"/var/lib/postgresql/{VERSION}/{NAME}"
BY_HAND = f"""
set -e
pg_ctlcluster --mode fast {VERSION} {NAME} stop || true
find {DATA_DIR} -mindepth 1 -delete
{PGBIN}/pg_basebackup --host 127.0.1.1 --port {PORT} --username replicator --no-password \\
  --pgdata {DATA_DIR} --wal-method stream --checkpoint fast
touch {DATA_DIR}/standby.signal
echo "primary_conninfo = 'host=127.0.1.1 port={PORT} user=replicator'" \\
  >> {DATA_DIR}/postgresql.auto.conf
pg_ctlcluster {VERSION} {NAME} start
"""


def wait_streaming(timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            receiver = probe.wal_receiver("127.0.1.2", PORT)
        except probe.ProbeError:
            receiver = None
        if receiver and receiver[0] == "streaming":
            return
        if time.monotonic() > deadline:
            sys.exit(f"bench: the replica does not stream after {timeout} s ({receiver})")
        time.sleep(0.05)


def by_hand() -> float:
    started = time.monotonic()
    fleet.server_ns(2).run(["sh", "-c", BY_HAND], user="postgres", timeout=1200)
    wait_streaming()
    return time.monotonic() - started


def through_elephaas(replica: Instance, method: str) -> tuple[float, float, str]:
    started = time.monotonic()
    [job] = runner.run_inline(
        queue.create_jobs(JobKind.REBUILD, [replica], params={"method": method}, queue=False)
    )
    elapsed = time.monotonic() - started
    if job.state != JobState.SUCCEEDED:
        sys.exit(f"bench: rebuild ({method}) failed: {job.error}")
    copy = job.steps.filter(name__startswith="copy the data directory").first()
    rewind = job.steps.filter(name="pg_rewind from the upstream").first()
    step = copy or rewind
    return elapsed, step.duration if step else 0.0, job.summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    lab_herd.drop(NAME)
    lab_herd.create(NAME, primary=1, replicas=[2], port=PORT)
    env = {
        **os.environ,
        "PGPASSFILE": str(state.SECRETS_DIR / "pgpass"),
        "PGUSER": "elephaas",
        "PGDATABASE": "postgres",
    }
    print(f"pgbench -i -s {args.scale} on the primary …", flush=True)
    subprocess.run(
        [str(PGBIN / "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", "127.0.1.1"]
        + ["-p", str(PORT)],
        env=env,
        check=True,
        capture_output=True,
    )
    size = probe.control_facts("127.0.1.1", PORT).database_size
    print(f"databases on the primary: {size / 1024**2:.0f} MB", flush=True)
    envrow, _ = Environment.objects.get_or_create(name="bench")
    servers = []
    for lab in state.servers()[:2]:
        servers.append(
            Server.objects.filter(hostname=lab.hostname).first()
            or Server.objects.create(environment=envrow, **lab.inventory_fields())
        )
    try:
        runner.run_inline(queue.create_jobs(JobKind.DISCOVER, servers, queue=False))
        replica = Instance.objects.with_related().get(herd__name=NAME, server=servers[1])
        results: dict[str, list[tuple[float, float]]] = {"by hand": []}
        for method in ("pg_basebackup", "rsync", "auto"):
            results[method] = []
        for number in range(args.rounds):
            hand = by_hand()
            results["by hand"].append((hand, hand))
            print(f"  round {number + 1}: by hand {hand:.2f} s", flush=True)
            for method in ("pg_basebackup", "rsync", "auto"):
                elapsed, copy, summary = through_elephaas(replica, method)
                results[method].append((elapsed, copy))
                print(f"  round {number + 1}: ElepHaaS {method}: {elapsed:.2f} s — {summary}")
    finally:
        Job.objects.filter(instance__herd__name=NAME).delete()
        Instance.objects.filter(herd__name=NAME).delete()
        Herd.objects.filter(name=NAME).delete()
        lab_herd.drop(NAME)
    hand = statistics.median(t for t, _ in results["by hand"])
    print(f"rebuild of a {size / 1024**2:.0f} MB replica (median of {args.rounds}):")
    print(f"  by hand (pg_basebackup + standby config + start + streaming): {hand:.2f} s")
    for method in ("pg_basebackup", "rsync", "auto"):
        total = statistics.median(t for t, _ in results[method])
        copy = statistics.median(c for _, c in results[method])
        print(
            f"  ElepHaaS {method:13}: {total:.2f} s (copy step {copy:.2f} s); "
            f"ratio to by hand {total / hand:.2f}x"
        )
    ratio = statistics.median(t for t, _ in results["pg_basebackup"]) / hand
    print(f"ElepHaaS pg_basebackup / by hand: {ratio:.2f}x (goal <= 1.25x)")
    sys.exit(0 if ratio <= 1.25 else 1)


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        main()
