"""DR failover of a crashed primary under a write load, through the lab's real worker.

Each round builds herd `fobench` (primary srv1, replicas srv2 and srv3), starts a client
that commits one row at a time and records every id the server acknowledged, stalls the
primary's WAL senders (the replicas fall behind), writes --mb MB more, and kills the
primary's postgres with SIGKILL on a server that still answers SSH. Then one of:

- ElepHaaS, salvage on: a failover job with no tick; it must salvage and lose 0 commits;
- ElepHaaS, salvage skipped ("accept data loss" ticked): the loss without salvage;
- by hand (the floor): what a DBA types for the same salvage, run directly in the
  servers' namespaces without SSH handshakes: pg_controldata and pg_waldump for the end
  of WAL, rsync of the segments on the candidate, reload, wait for replay, promote, wait
  for a write.

Prints per round and overall: RTO (failover queued -> new primary accepted a write),
WAL salvaged and salvage throughput (copy + replay), acknowledged commits missing on the
new primary, and ElepHaaS's salvage RTO against the floor. Leaves the inventory as found.

    python -m lab up && .venv/bin/python bench/bench_failover.py [--rounds 2] [--mb 8]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

import psycopg2  # noqa: E402

from herds.models import Drill, Environment, Herd  # noqa: E402
from instances import waldump  # noqa: E402
from instances.controldata import parse_controldata  # noqa: E402
from instances.jobs import queue, runner  # noqa: E402
from instances.models import Instance, Job, JobKind, JobState, Server  # noqa: E402
from instances.wal import EndOfWal, format_bytes, int_to_lsn, lsn_to_int  # noqa: E402
from lab import fleet, state  # noqa: E402
from lab import herd as lab_herd  # noqa: E402

NAME, PORT = "fobench", 5810
VERSION = fleet.pg_version()
BIN = f"/usr/lib/postgresql/{VERSION}/bin"
DATA = f"/var/lib/postgresql/{VERSION}/{NAME}"


def connect(host: str):
    conn = psycopg2.connect(
        host=host,
        port=PORT,
        dbname="postgres",
        user="elephaas",
        password=state.secret("pg_password"),
        connect_timeout=3,
    )
    conn.autocommit = True
    return conn


class Writer(threading.Thread):
    """Commits one row at a time; `acked` holds only ids the server acknowledged."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.conn = connect("127.0.1.1")
        with self.conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS bench_rows (v bigint PRIMARY KEY)")
        self.acked: list[int] = []

    def run(self) -> None:
        value = 0
        try:
            with self.conn.cursor() as cur:
                while value < 10_000_000:
                    value += 1
                    cur.execute("INSERT INTO bench_rows VALUES (%s)", [value])
                    self.acked.append(value)
        except psycopg2.Error:
            pass


class Bench:
    """The bench's herd in the inventory, for one round at a time; the servers and the
    environment it may add go with the rest at the end (bench/_inventory.as_found)."""

    def inventory(self) -> Herd:
        envrow, _ = Environment.objects.get_or_create(name="bench")
        servers = [
            Server.objects.filter(hostname=lab.hostname).first()
            or Server.objects.create(environment=envrow, **lab.inventory_fields())
            for lab in state.servers()[:3]
        ]
        runner.run_inline(queue.create_jobs(JobKind.DISCOVER, servers, queue=False))
        return Herd.objects.get(name=NAME)

    def forget(self) -> None:
        Drill.objects.filter(herd__name=NAME).delete()
        Job.objects.filter(herd__name=NAME).delete()
        Job.objects.filter(instance__herd__name=NAME).delete()
        Instance.objects.filter(herd__name=NAME).delete()
        Herd.objects.filter(name=NAME).delete()

    def clean_up(self) -> None:
        self.forget()
        lab_herd.drop(NAME)


def crash_behind(mb: int, inventory: bool) -> list[int]:
    """Fresh herd (in the inventory too when ElepHaaS fails it over), a committing client,
    stalled WAL senders, `mb` MB more, kill -9."""
    lab_herd.drop(NAME)
    lab_herd.create(NAME, primary=1, replicas=[2, 3], port=PORT)
    if inventory:
        BENCH.inventory()
    writer = Writer()
    conn = connect("127.0.1.1")
    with conn.cursor() as cur:
        deadline = time.monotonic() + 30
        while True:  # the replicas have the table before they stall
            cur.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= pg_current_wal_lsn()"
            )
            if cur.fetchone()[0] == 2:
                break
            if time.monotonic() > deadline:
                sys.exit("bench: the replicas did not catch up")
            time.sleep(0.05)
        cur.execute("SELECT pid FROM pg_stat_replication")
        senders = [row[0] for row in cur.fetchall()]
        for pid in senders:
            os.kill(pid, signal.SIGSTOP)
        writer.start()
        cur.execute("CREATE TABLE filler (v text)")
        rows = mb * 1024 * 1024 // 150
        cur.execute(
            "INSERT INTO filler SELECT repeat('x', 100) FROM generate_series(1, %s)", [rows]
        )
    conn.close()
    time.sleep(0.3)
    pidfile = fleet.server_ns(1).folder / "lib" / VERSION / NAME / "postmaster.pid"
    postmaster = int(pidfile.read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    pids = [postmaster, *map(int, children)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10  # gone, not a zombie that pg_ctl takes for running
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.join(timeout=30)
    time.sleep(0.2)
    return writer.acked


def missing_on(host: str, acked: list[int]) -> int:
    conn = connect(host)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM bench_rows WHERE v = ANY(%s)", [acked])
        found = cur.fetchone()[0]
    conn.close()
    return len(acked) - found


def best_replica() -> str:
    best = None
    for host in ("127.0.1.2", "127.0.1.3"):
        conn = connect(host)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_last_wal_receive_lsn()::text")
            lsn = lsn_to_int(cur.fetchone()[0])
        conn.close()
        if best is None or lsn > best[0]:
            best = (lsn, host)
    return best[1]


def elephaas_round(mb: int, salvage: bool) -> dict:
    acked = crash_behind(mb, inventory=True)
    bench = BENCH
    herd = Herd.objects.get(name=NAME)
    params = {"skip_salvage": not salvage, "accept_data_loss": not salvage}
    primary = Instance.objects.get(herd=herd, server__hostname="127.0.1.1")
    params["expected_primary_id"] = primary.pk
    [job] = queue.create_jobs(JobKind.FAILOVER, [herd], params=params)
    started = time.monotonic()
    while job.state not in JobState.terminal():
        if time.monotonic() - started > 300:
            sys.exit("bench: the failover job still runs after 300 s")
        time.sleep(0.05)
        job.refresh_from_db()
    if job.state != JobState.SUCCEEDED:
        steps = "\n".join(f"  {s.name}: {s.output[:300]}" for s in job.steps.order_by("seq"))
        sys.exit(f"bench: failover #{job.pk} {job.state}: {job.error}\n{steps}")
    drill = Drill.objects.get(job=job)
    salvage_seconds = sum(
        s.duration or 0
        for s in job.steps.all()
        if s.name.startswith(("list the old primary's pg_wal", "copy ", "wake "))
        or (s.name.startswith("wait until") and " replayed " in s.name)
    )
    new_host = drill.new_primary.split()[2].rsplit(":", 1)[0]
    result = {
        "rto": (drill.writable_at - job.created_at).total_seconds(),
        "salvaged": drill.wal_salvaged_bytes or 0,
        "salvage_s": salvage_seconds,
        "lost_bytes": drill.data_lost_bytes,
        "acked": len(acked),
        "missing": missing_on(new_host, acked),
    }
    bench.forget()
    return result


def run_in(number: int, argv: list[str]) -> subprocess.CompletedProcess:
    return fleet.server_ns(number).run(argv, user="postgres", check=False)


def by_hand_round(mb: int) -> dict:
    """The floor: the same salvage typed by a DBA who knows exactly what to do."""
    acked = crash_behind(mb, inventory=False)
    started = time.monotonic()
    control = parse_controldata(run_in(1, [f"{BIN}/pg_controldata", "-D", DATA]).stdout)
    dump = run_in(
        1,
        [
            f"{BIN}/pg_waldump",
            "--path",
            f"{DATA}/pg_wal",
            "--start",
            int_to_lsn(control.redo_lsn),
            "--timeline",
            str(control.timeline),
            "--quiet",
        ],
    )
    end = EndOfWal(waldump.end_of_wal(dump.stderr), control.timeline, control.segment_size)
    host = best_replica()
    number = int(host.rsplit(".", 1)[1])
    conn = connect(host)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_last_wal_receive_lsn()::text")
        start = lsn_to_int(cur.fetchone()[0])
    copy_started = time.monotonic()
    names = end.segments_from(start)
    run_in(
        number,
        [
            "rsync",
            "-a",
            "-I",
            "-e",
            "ssh -o BatchMode=yes",
            *[f"--include={n}" for n in names],
            "--exclude=*",
            f"postgres@127.0.1.1:{DATA}/pg_wal/",
            f"{DATA}/pg_wal/",
        ],
    )
    with conn.cursor() as cur:
        cur.execute("SELECT pg_reload_conf()")
        while True:
            cur.execute("SELECT pg_last_wal_replay_lsn()::text")
            if lsn_to_int(cur.fetchone()[0]) >= end.lsn:
                break
            if time.monotonic() - copy_started > 120:
                sys.exit("bench: by hand, the replay did not reach the end of WAL")
            time.sleep(0.02)
    salvage_seconds = time.monotonic() - copy_started
    conn.close()
    run_in(number, ["pg_ctlcluster", VERSION, NAME, "promote"])
    while True:
        try:
            conn = connect(host)
            with conn.cursor() as cur:
                cur.execute("SELECT txid_current()")
            conn.close()
            break
        except psycopg2.Error:
            if time.monotonic() - started > 120:
                sys.exit("bench: by hand, the promoted replica does not accept writes")
            time.sleep(0.02)
    return {
        "rto": time.monotonic() - started,
        "salvaged": end.lsn - start,
        "salvage_s": salvage_seconds,
        "acked": len(acked),
        "missing": missing_on(host, acked),
    }


BENCH = Bench()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mb", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"salvage": [], "no salvage": [], "by hand": []}
    try:
        for _ in range(args.rounds):
            for mode in results:
                if mode == "by hand":
                    r = by_hand_round(args.mb)
                else:
                    r = elephaas_round(args.mb, salvage=mode == "salvage")
                results[mode].append(r)
                rate = r["salvaged"] / r["salvage_s"] / 1024 / 1024 if r["salvage_s"] else 0
                print(
                    f"  {mode}: RTO {r['rto']:.2f} s, WAL salvaged "
                    f"{format_bytes(r['salvaged'])} in {r['salvage_s']:.2f} s "
                    f"({rate:.0f} MB/s), commits acknowledged {r['acked']}, missing on the "
                    f"new primary {r['missing']}",
                    flush=True,
                )
    finally:
        BENCH.clean_up()

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    salvage, floor = median("salvage", "rto"), median("by hand", "rto")
    rate = sum(r["salvaged"] for r in results["salvage"]) / max(
        1e-9, sum(r["salvage_s"] for r in results["salvage"])
    )
    lost_with = sum(r["missing"] for r in results["salvage"])
    lost_without = sum(r["missing"] for r in results["no salvage"])
    print(
        f"failover RTO (queued -> writable), median of {args.rounds}: with salvage "
        f"{salvage:.2f} s, without {median('no salvage', 'rto'):.2f} s; by hand with "
        f"salvage {floor:.2f} s; ratio ElepHaaS/by hand {salvage / floor:.2f}x"
    )
    print(
        f"WAL salvaged: median {format_bytes(int(median('salvage', 'salvaged')))} per "
        f"failover, {rate / 1024 / 1024:.0f} MB/s (copy + replay)"
    )
    print(
        f"acknowledged commits lost: with salvage {lost_with} (goal 0), without salvage "
        f"{lost_without}, by hand {sum(r['missing'] for r in results['by hand'])}"
    )
    sys.exit(0 if lost_with == 0 else 1)


if __name__ == "__main__":
    from _inventory import as_found

    with as_found():
        main()
