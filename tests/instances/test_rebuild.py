"""Rebuild, remaster and init through the real worker on the lab.

Herd `rbt` on port 5530: a primary on srv1, replicas on srv2 and srv3, discovered into
the inventory; srv4 is empty for init. Dropped after each test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from instances import probe
from instances.choices import Role
from instances.jobs import queue, runner
from instances.models import Instance, Job, JobKind, JobState
from lab import fleet
from lab import herd as lab_herd
from tests.factories import make_environment, make_herd
from tests.helpers import add_lab_server, wait_for_job

pytestmark = [pytest.mark.lab, pytest.mark.django_db(transaction=True)]

NAME = "rbt"
PORT = 5530
DATA_DIR = f"/var/lib/postgresql/15/{NAME}"


@pytest.fixture
def rbt(lab_servers):
    """{server number: Instance} for herd rbt, plus the Server rows (srv1–4)."""
    if len(lab_servers) < 4:
        pytest.fail("these tests need 4 lab servers")
    lab_herd.drop(NAME)  # leftovers of an interrupted run
    lab_herd.create(NAME, primary=1, replicas=[2, 3], port=PORT)
    env = make_environment("prod")
    servers = [add_lab_server(s, env) for s in lab_servers[:4]]
    runner.run_inline(queue.create_jobs(JobKind.DISCOVER, servers[:3], queue=False))
    found = {
        n: Instance.objects.with_related().get(server=servers[n - 1], port=PORT) for n in (1, 2, 3)
    }
    assert found[1].role == Role.PRIMARY
    assert found[2].upstream_id == found[3].upstream_id == found[1].pk
    found["servers"] = servers
    yield found
    lab_herd.drop(NAME)


def run(kind, instance, timeout=180, **params) -> Job:
    [job] = queue.create_jobs(kind, [instance], params=params)
    return wait_for_job(job, timeout=timeout)


def sql(number: int, text: str) -> str:
    return fleet.psql(fleet.server_ns(number), PORT, text)


def ctl(number: int, action: str) -> None:
    fleet.server_ns(number).run(
        ["pg_ctlcluster", "--mode", "fast", "15", NAME, action], user="postgres", timeout=120
    )


def wait_rows(number: int, expected: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = int(sql(number, "SELECT count(*) FROM moved"))
        except Exception:  # noqa: BLE001 - the table may not have arrived yet
            seen = None
        if seen == expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"srv{number} has {seen} rows, expected {expected}")
        time.sleep(0.2)


def streams_from(number: int, upstream: int) -> bool:
    receiver = probe.wal_receiver(f"127.0.1.{number}", PORT)
    return receiver is not None and receiver[:3] == ("streaming", f"127.0.1.{upstream}", PORT)


def write_rows(count: int) -> None:
    sql(
        1,
        "CREATE TABLE IF NOT EXISTS moved (n int); "
        f"INSERT INTO moved SELECT generate_series(1, {count});",
    )


def diverge_srv2() -> None:
    """As after a failover: srv2 is promoted, takes a write the herd never sees (n = -1),
    and is stopped."""
    write_rows(10)
    wait_rows(2, 10)
    fleet.server_ns(2).run(["pg_ctlcluster", "15", NAME, "promote"], user="postgres")
    deadline = time.monotonic() + 30
    while probe.probe("127.0.1.2", PORT).in_recovery:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    sql(2, "INSERT INTO moved VALUES (-1)")
    ctl(2, "stop")


def notes(job: Job) -> list[str]:
    return [s.name for s in job.steps.all()]


def assert_rebuilt(job: Job, replica: Instance, upstream: Instance, method: str) -> None:
    assert job.state == JobState.SUCCEEDED, job.error
    assert f"rebuilt from {upstream.herd.name} on {upstream.address} with {method}" in job.summary
    assert "; streaming, lag " in job.summary
    assert job.progress == 100
    replica.refresh_from_db()
    assert (replica.role, replica.upstream_id, replica.online) == (Role.REPLICA, upstream.pk, True)
    assert (replica.needs_rebuild, replica.fenced) == (False, False)


def test_it_rebuilds_a_replica_left_behind_with_pg_rewind(celery_worker, rbt):
    replica = rbt[2]
    ctl(2, "stop")
    write_rows(1000)
    Instance.objects.filter(pk=replica.pk).update(needs_rebuild=True)
    job = run(JobKind.REBUILD, replica)
    assert_rebuilt(job, replica, rbt[1], "pg_rewind")
    [decision] = [n for n in notes(job) if n.startswith("method: ")]
    assert decision.startswith("method: pg_rewind because same system identifier")
    assert streams_from(2, 1)
    wait_rows(2, 1000)


def test_it_copies_a_damaged_replica_in_full_with_progress(celery_worker, rbt):
    replica = rbt[2]
    sql(
        1,
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 40000) g",
    )
    ctl(2, "stop")
    fleet.server_ns(2).run(["rm", f"{DATA_DIR}/global/pg_control"], user="postgres")
    write_rows(10)
    [job] = queue.create_jobs(JobKind.REBUILD, [replica], params={"max_rate_kb": 8192})
    seen = set()
    deadline = time.monotonic() + 180
    while not Job.objects.get(pk=job.pk).is_terminal and time.monotonic() < deadline:
        for output in job.steps.filter(name__startswith="copy progress").values_list(
            "output", flat=True
        ):
            if re.search(r" of .* \(\d+%\), .*/s$", output):
                seen.add(output)
        time.sleep(0.2)
    job = wait_for_job(job, timeout=5)
    assert_rebuilt(job, replica, rbt[1], "pg_basebackup")
    [decision] = [n for n in notes(job) if n.startswith("method: ")]
    assert decision.startswith("method: pg_basebackup because pg_controldata cannot read")
    assert seen, "no progress was reported during the copy"
    progress = job.steps.get(name="copy progress (pg_basebackup)")
    assert progress.output.startswith("copied ") and progress.ok
    assert streams_from(2, 1)
    wait_rows(2, 10)


@pytest.mark.parametrize("method", ["pg_basebackup", "rsync"])
def test_it_copies_a_running_replica_with_the_method_asked(celery_worker, rbt, method):
    replica = rbt[3]
    write_rows(500)
    job = run(JobKind.REBUILD, replica, method=method)
    assert_rebuilt(job, replica, rbt[1], method)
    names = notes(job)
    assert "stop it (fast) before touching its data directory" in names
    assert f"method: {method} because the DBA asked for a full copy with it" in names
    if method == "rsync":
        assert (
            names.index("pg_backup_start on the upstream")
            < names.index("copy the data directory (rsync)")
            < names.index("pg_backup_stop on the upstream")
        )
    assert streams_from(3, 1)
    write_rows(1)
    wait_rows(3, 501)
    # Its own configuration survived the copy (primary_conninfo names the upstream, no
    # password anywhere in the job).
    conninfo = sql(3, "SHOW primary_conninfo")
    assert "host=127.0.1.1" in conninfo and "password" not in conninfo
    assert not any("password=" in (s.command + s.output) for s in job.steps.all())


def test_it_refuses_to_rebuild_a_primary_without_force(celery_worker, rbt):
    job = run(JobKind.REBUILD, rbt[1])
    assert job.state == JobState.FAILED
    assert job.error.startswith("refusing to rebuild: ")
    assert "is running as a primary" in job.error and "'force'" in job.error
    assert job.steps.count() == 0
    assert probe.probe("127.0.1.1", PORT).in_recovery is False


def test_it_refuses_to_rebuild_an_upstream_of_other_replicas_without_force(celery_worker, rbt):
    Instance.objects.filter(pk=rbt[3].pk).update(upstream=rbt[2])
    job = run(JobKind.REBUILD, rbt[2])
    assert job.state == JobState.FAILED
    assert "has replicas of its own" in job.error and str(rbt[3].address) in job.error


def test_it_remasters_to_a_cascading_upstream_and_back(celery_worker, rbt):
    primary, a, b = rbt[1], rbt[2], rbt[3]
    job = run(JobKind.REMASTER, b, upstream_id=a.pk)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.summary == f"{NAME} on {b.address} now streams from {NAME} on {a.address}"
    assert streams_from(3, 2)
    b.refresh_from_db()
    assert b.upstream_id == a.pk
    write_rows(7)
    wait_rows(3, 7)

    job = run(JobKind.REMASTER, b, upstream_id=primary.pk)
    assert job.state == JobState.SUCCEEDED, job.error
    assert streams_from(3, 1)
    b.refresh_from_db()
    assert b.upstream_id == primary.pk

    # A loop is refused: A cannot follow B while B follows A.
    assert run(JobKind.REMASTER, b, upstream_id=a.pk).state == JobState.SUCCEEDED
    loop = run(JobKind.REMASTER, a, upstream_id=b.pk)
    assert loop.state == JobState.FAILED and "replication loop" in loop.error


def test_it_refuses_an_upstream_that_is_behind(celery_worker, rbt):
    a, b = rbt[2], rbt[3]
    # Cut A off from the primary: it stops receiving while B goes on.
    probe.set_primary_conninfo("127.0.1.2", PORT, "host=127.0.1.1 port=1 user=replicator")
    write_rows(100)
    sql(1, "SELECT pg_switch_wal()")
    wait_rows(3, 100)
    job = run(JobKind.REMASTER, b, upstream_id=a.pk)
    assert job.state == JobState.FAILED
    assert job.error.startswith(f"refusing to remaster {NAME} on {b.address}: ")
    assert f"{NAME} on {a.address} is behind" in job.error
    assert streams_from(3, 1)
    b.refresh_from_db()
    assert b.upstream_id == rbt[1].pk


def test_it_creates_a_new_replica_on_an_empty_server(celery_worker, rbt):
    primary, servers = rbt[1], rbt["servers"]
    write_rows(300)
    new = Instance.objects.create(
        herd=primary.herd, server=servers[3], port=PORT, role=Role.REPLICA, upstream=primary
    )
    job = run(JobKind.INIT, new)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.summary.startswith(f"{NAME} on 127.0.1.4:{PORT} created from {NAME} on")
    names = notes(job)
    assert "create the cluster (pg_createcluster)" in names
    assert f"copy the herd's configuration from {NAME} on {primary.address}" in names
    assert streams_from(4, 1)
    wait_rows(4, 300)
    new.refresh_from_db()
    assert (new.online, new.role, new.upstream_id) == (True, Role.REPLICA, primary.pk)

    again = run(JobKind.INIT, new)
    assert again.state == JobState.SUCCEEDED, again.error
    assert again.summary.endswith(
        "already exists and streams from " + f"{NAME} on {primary.address}"
    )


def test_it_can_be_cancelled_mid_copy_and_retried(celery_worker, rbt):
    replica = rbt[2]
    sql(
        1,
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 40000) g",
    )
    write_rows(5)
    [job] = queue.create_jobs(
        JobKind.REBUILD, [replica], params={"method": "pg_basebackup", "max_rate_kb": 2048}
    )
    deadline = time.monotonic() + 60
    while not job.steps.filter(name="copy progress (pg_basebackup)", output__contains="%").exists():
        assert time.monotonic() < deadline, "the copy never reported progress"
        time.sleep(0.1)
    queue.cancel(job, None)
    job = wait_for_job(job, timeout=30)
    assert job.state == JobState.CANCELLED
    assert re.fullmatch(
        r"cancelled by system while running: the copy stopped at \d+%: the data directory of "
        rf"{re.escape(replica.label)} is incomplete and marked so, the instance is stopped; "
        "rebuild it again",
        job.error,
    ), job.error
    step = job.steps.get(name="copy progress (pg_basebackup)")
    assert step.output.startswith("cancelled at ") and "the instance is stopped" in step.output
    assert not fleet.cluster_running(fleet.server_ns(2), "15", NAME)
    replica.refresh_from_db()
    assert replica.online is False

    retried = wait_for_job(queue.retry(job, None), timeout=180)
    assert_rebuilt(retried, replica, rbt[1], "pg_basebackup")
    outputs = "\n".join(retried.steps.values_list("output", flat=True))
    assert "kept its own postgresql.auto.conf" in outputs
    assert streams_from(2, 1)
    wait_rows(2, 5)


def test_it_rewinds_a_fenced_old_primary_that_diverged(celery_worker, rbt):
    """As after a failover: srv2 was promoted, took a write of its own, was stopped and
    fenced. A rebuild needs no force for it and rewinds it onto the herd's primary."""
    old = rbt[2]
    diverge_srv2()
    start_conf = fleet.server_ns(2).folder / "etc" / "15" / NAME / "start.conf"
    start_conf.write_text("manual\n")
    Instance.objects.filter(pk=old.pk).update(
        role=Role.PRIMARY, upstream=None, fenced=True, needs_rebuild=True, online=False
    )
    write_rows(5)
    job = run(JobKind.REBUILD, old)
    assert_rebuilt(job, old, rbt[1], "pg_rewind")
    assert "let it start at boot again (start.conf: auto)" in notes(job)
    assert start_conf.read_text().strip() == "auto"
    assert streams_from(2, 1)
    wait_rows(2, 15)
    assert sql(2, "SELECT count(*) FROM moved WHERE n = -1") == "0"


def test_a_rebuild_puts_the_replica_back_under_the_read_only_vhost(celery_worker, rbt):
    """A rebuilt replica streams again, so the herd's read-only vhost lists it: the
    rebuild queues a Refresh DNS of the herd, which the worker runs."""
    import secrets

    from herds import dns

    herd = rbt[1].herd
    herd.ro_vhost = f"rbt-ro-{secrets.token_hex(3)}"
    herd.save()
    dns.set_ro_vhost(herd.ro_vhost, [])  # as after a failover that left no replica
    try:
        ctl(2, "stop")
        job = run(JobKind.REBUILD, rbt[2])
        assert_rebuilt(job, rbt[2], rbt[1], "pg_rewind")
        refresh = Job.objects.get(kind=JobKind.REFRESH_DNS, herd=herd)
        assert f"DNS refresh of {herd.name} queued (job #{refresh.pk})" in job.summary
        refresh = wait_for_job(refresh, timeout=30)
        assert refresh.state == JobState.SUCCEEDED, refresh.error
        assert refresh.requested_by_name == job.requested_by_name
        assert "127.0.1.2" in dns.lookup(herd.ro_vhost)
    finally:
        dns.delete_name(herd.ro_vhost)


def test_it_creates_a_primary_and_refuses_a_second_one(celery_worker, rbt):
    servers = rbt["servers"]
    herd = rbt[1].herd
    second = Instance.objects.create(herd=herd, server=servers[3], port=PORT, role=Role.PRIMARY)
    job = run(JobKind.INIT, second)
    assert job.state == JobState.FAILED
    assert job.error.startswith(f"{NAME} already has a primary ({NAME} on 127.0.1.1:{PORT})")
    assert job.steps.count() == 0

    lone = make_herd("rbnew", environment=herd.environment, port=5538)
    try:
        new = Instance.objects.create(herd=lone, server=servers[3], role=Role.PRIMARY)
        job = run(JobKind.INIT, new)
        assert job.state == JobState.SUCCEEDED, job.error
        assert job.summary.startswith("rbnew on 127.0.1.4:5538 created and running")
        assert fleet.cluster_running(fleet.server_ns(4), "15", "rbnew")
        new.refresh_from_db()
        assert new.online is True
    finally:
        lab_herd.drop("rbnew")


def test_it_copies_files_that_differ_only_in_content_with_rsync(celery_worker, rbt):
    """A replica's file can have the upstream's size and mtime and other contents (both
    written in the same second): rsync must compare contents, or the stale file stays."""
    replica = rbt[3]
    write_rows(2000)
    wait_rows(3, 2000)
    sql(1, "CHECKPOINT")
    relation = sql(1, "SELECT pg_relation_filepath('moved')")
    mtime = fleet.server_ns(1).run(["stat", "-c", "%Y", f"{DATA_DIR}/{relation}"]).stdout.strip()
    ctl(3, "stop")
    path = f"{DATA_DIR}/{relation}"
    size = int(fleet.server_ns(3).run(["stat", "-c", "%s", path]).stdout)
    fleet.server_ns(3).run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=8192", f"count={size // 8192}", "conv=notrunc"],
        user="postgres",
    )
    fleet.server_ns(3).run(["touch", "-d", f"@{mtime}", path], user="postgres")
    job = run(JobKind.REBUILD, replica, method="rsync")
    assert_rebuilt(job, replica, rbt[1], "rsync")
    wait_rows(3, 2000)


# --- a job owns what it starts: the worker killed mid-copy ----------------------------------


def copy_processes() -> list[str]:
    """pg_basebackup, rsync and pg_rewind processes of herd rbt on any lab server (the
    servers share this machine's process table)."""
    out = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True).stdout
    return [
        line.strip()
        for line in out.splitlines()
        if re.search(r"pg_basebackup|rsync|pg_rewind", line) and f"/{NAME}" in line
    ]


def slots_on_primary() -> str:
    return sql(1, "SELECT count(*) FROM pg_replication_slots")


def run_on_lone_worker(lone_worker, kind, instance, **params):
    from instances.tasks import run_job

    worker = lone_worker()
    [job] = queue.create_jobs(kind, [instance], params=params, queue=False)
    run_job.apply_async(args=[job.pk], task_id=job.task_id, queue="lone")
    return worker, job


def kill_worker_then_check_leftovers(lone_worker, worker, job, replica, rbt) -> Job:
    """kill -9 the worker; the next worker on this host finds the job lost. Then: no copy
    process of it remains within 10 s, no slot on the primary, Start refuses the replica,
    and a plain retry rebuilds it with the primary's rows."""
    assert copy_processes(), "no copy process was running when the worker was killed"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    lone_worker()  # reaps the dead worker's job at start-up
    job = wait_for_job(job, timeout=60)
    found_lost = time.monotonic()
    assert job.state == JobState.FAILED
    assert f"the data directory of {replica.label} is incomplete and marked so" in job.error
    assert "retry the rebuild" in job.error
    while copy_processes():
        assert time.monotonic() - found_lost < 10, f"left running: {copy_processes()}"
        time.sleep(0.2)
    assert slots_on_primary() == "0"
    replica.refresh_from_db()
    assert replica.rebuild_job == job.pk

    start = run(JobKind.START, replica)
    assert start.state == JobState.FAILED
    assert start.error == (
        f"refusing to start it: rebuild of {replica.label} did not finish (job {job.pk}): its "
        "data directory is incomplete; rebuild it again"
    )
    assert not fleet.cluster_running(fleet.server_ns(2), "15", NAME)
    [found] = runner.run_inline(
        queue.create_jobs(JobKind.DISCOVER, [rbt["servers"][1]], queue=False)
    )
    assert f"left as is {replica}" in found.summary
    replica.refresh_from_db()
    assert replica.rebuild_job == job.pk and replica.role == Role.REPLICA

    retried = wait_for_job(queue.retry(job, None), timeout=240)
    assert retried.state == JobState.SUCCEEDED, retried.error
    replica.refresh_from_db()
    assert replica.rebuild_job is None and replica.role == Role.REPLICA
    assert streams_from(2, 1)
    wait_rows(2, int(sql(1, "SELECT count(*) FROM moved")))
    return retried


def big_primary(rows: int = 40000) -> None:
    sql(
        1,
        "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad "
        f"FROM generate_series(1, {rows}) g",
    )
    write_rows(7)


def wait_for_copy(job: Job, name: str) -> None:
    deadline = time.monotonic() + 60
    while not job.steps.filter(name=name, output__contains="%").exists():
        assert time.monotonic() < deadline, f"the copy never reported progress ({name})"
        time.sleep(0.1)


@pytest.mark.parametrize("method", ["pg_basebackup", "rsync"])
def test_it_ends_a_copy_whose_worker_was_killed_and_a_retry_finishes_it(
    celery_worker, rbt, lone_worker, method
):
    replica = rbt[2]
    big_primary()
    assert slots_on_primary() == "0"
    worker, job = run_on_lone_worker(
        lone_worker, JobKind.REBUILD, replica, method=method, max_rate_kb=2048
    )
    wait_for_copy(job, f"copy progress ({method})")
    retried = kill_worker_then_check_leftovers(lone_worker, worker, job, replica, rbt)
    assert f"with {method}" in retried.summary
    lost = Job.objects.get(pk=job.pk)
    [cleanup] = lost.steps.filter(name="after it was lost: end what it left running")
    assert cleanup.host == "127.0.1.2" and cleanup.ok


def test_it_ends_a_pg_rewind_whose_worker_was_killed_and_a_retry_copies_in_full(
    celery_worker, rbt, lone_worker
):
    """srv2 diverged (promoted, wrote, stopped); the primary then grew a table pg_rewind
    must copy whole. The pg_rewind process is stopped (SIGSTOP) once it runs, so that the
    worker is killed while it certainly runs; a stopped process still dies of SIGKILL."""
    replica = rbt[2]
    diverge_srv2()
    Instance.objects.filter(pk=replica.pk).update(needs_rebuild=True, online=False)
    big_primary(20000)
    worker, job = run_on_lone_worker(lone_worker, JobKind.REBUILD, replica)
    deadline = time.monotonic() + 60
    rewinding = []
    while not rewinding:
        assert time.monotonic() < deadline, "pg_rewind never ran"
        rewinding = [p for p in copy_processes() if "pg_rewind" in p and "sh -c" not in p]
        time.sleep(0.01)
    os.kill(int(rewinding[0].split()[0]), signal.SIGSTOP)
    retried = kill_worker_then_check_leftovers(lone_worker, worker, job, replica, rbt)
    # Half a rewind is not a copy of the herd: the retry copies in full.
    assert "with pg_basebackup" in retried.summary
    [decision] = [n for n in notes(retried) if n.startswith("method: ")]
    assert f"the rebuild of job {job.pk} did not finish" in decision
    assert sql(2, "SELECT count(*) FROM moved WHERE n = -1") == "0"
