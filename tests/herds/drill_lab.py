"""The `drill` herd of the switchover and failover lab tests, and what they do to it."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

from herds.models import Herd
from instances import probe
from instances.jobs import queue, runner
from instances.models import Instance, JobKind
from instances.wal import lsn_to_int
from lab import fleet
from lab import herd as lab_herd
from tests.factories import make_environment
from tests.helpers import add_lab_server, wait_for_job

# Two test runs on one lab at once (see README, Development) need their own drill herd.
NAME = os.environ.get("ELEPHAAS_TEST_DRILL", "drill")
PORT = int(os.environ.get("ELEPHAAS_TEST_DRILL_PORT", "5520"))


def connect(host: str, lab, port: int = PORT):
    return psycopg2.connect(
        host=host,
        port=port,
        dbname="postgres",
        user="elephaas",
        password=lab.secret("pg_password"),
        connect_timeout=3,
    )


@pytest.fixture
def drill(lab, lab_servers):
    """Herd `drill`: primary srv1, replicas srv2 and srv3, with a vhost; in the inventory."""
    lab_herd.create(NAME, primary=1, replicas=[2, 3], port=PORT)
    env = make_environment("prod")
    servers = [add_lab_server(s, env) for s in lab_servers[:3]]
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, servers, queue=False))
    herd = Herd.objects.get(name=NAME)
    herd.vhost = f"drill-{secrets.token_hex(3)}"
    herd.save()
    yield herd
    # A test may have crashed srv1: bring it back as after a reboot.
    fleet.ensure_server(1)
    fleet.boot_clusters(1)
    lab_herd.drop(NAME)


def instances(herd):
    return {i.server.hostname: i for i in Instance.objects.with_related().filter(herd=herd)}


def run(kind, herd, **params):
    [job] = queue.create_jobs(kind, [herd], params=params)
    return wait_for_job(job, timeout=180)


class Writer(threading.Thread):
    """A client committing one row at a time until its server goes away."""

    def __init__(self, host, lab, port: int = PORT, first: int = 1):
        super().__init__(daemon=True)
        self.first = first
        self.conn = connect(host, lab, port)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS drill_rows (v bigint PRIMARY KEY)")
        self.acked: list[int] = []
        self.stop = threading.Event()

    def run(self):
        deadline = time.monotonic() + 120
        value = self.first - 1
        try:
            with self.conn.cursor() as cur:
                while not self.stop.is_set() and time.monotonic() < deadline:
                    value += 1
                    cur.execute("INSERT INTO drill_rows VALUES (%s)", [value])
                    self.acked.append(value)  # only after the server acknowledged the commit
        except psycopg2.Error:
            pass


def stop(number: int, mode: str = "fast") -> None:
    fleet.server_ns(number).run(["pg_ctlcluster", "--mode", mode, "15", NAME, "stop"])


def start(number: int) -> None:
    fleet.server_ns(number).run(["pg_ctlcluster", "15", NAME, "start"])


def write(lab, rows: int, payload: int = 100) -> str:
    conn = connect("127.0.1.1", lab)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS filler (v text)")
        cur.execute(
            "INSERT INTO filler SELECT repeat('x', %s) FROM generate_series(1, %s)", [payload, rows]
        )
        cur.execute("SELECT pg_current_wal_lsn()::text")
        lsn = cur.fetchone()[0]
    conn.close()
    return lsn


def rediscover(hostname: str) -> None:
    from instances.models import Server

    runner.run_inline(
        queue.create_jobs(JobKind.DISCOVER, [Server.objects.get(hostname=hostname)], queue=False)
    )


def stall_senders(lab) -> list[int]:
    """SIGSTOP the primary's WAL senders: its replicas receive nothing more while it goes
    on committing (a stalled network or WAL receiver)."""
    conn = connect("127.0.1.1", lab)
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_replication")
        pids = [row[0] for row in cur.fetchall()]
    conn.close()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def kill9(number: int) -> None:
    """kill -9 the drill cluster's postmaster and every process it started, at once (a
    crash: no shutdown checkpoint, nothing more sent)."""
    pidfile = fleet.server_ns(number).folder / "lib" / "15" / NAME / "postmaster.pid"
    postmaster = int(pidfile.read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in [postmaster, *map(int, children)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{p}") for p in [postmaster, *map(int, children)]):
        assert time.monotonic() < deadline, "the killed postgres processes did not exit"
        time.sleep(0.02)


def caught_up(lab, numbers=(2, 3), timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        sent = probe.probe("127.0.1.1", PORT).lsn
        received = [probe.probe(f"127.0.1.{n}", PORT).receive_lsn for n in numbers]
        if all(r and lsn_to_int(r) >= lsn_to_int(sent) for r in received):
            return
        assert time.monotonic() < deadline, "the replicas did not catch up"
        time.sleep(0.05)


def rows_on(host: str, lab, values: list[int], port: int = PORT) -> int:
    """How many of `values` the drill_rows table on `host` holds."""
    conn = connect(host, lab, port)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM drill_rows WHERE v = ANY(%s)", [values])
        found = cur.fetchone()[0]
    conn.close()
    return found
