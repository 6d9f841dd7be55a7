"""The Debian package, on this machine, end to end.

1. `make deb` builds it (debhelper, dh-virtualenv, lintian); apt installs it, after
   purging whatever an earlier run left;
2. what it installed: the user, the SSH key, the secret key, the conffiles, the wrapper;
3. `systemd-analyze verify` and `security` check the three units;
4. the units' own commands start the services (tests/deploy/units.py: PID 1 here is not
   systemd), pointed at the lab: a metadata database created for this test, Redis
   database 13, the lab's slapd, and two lab servers that trust the package's SSH key
   while the test runs;
5. over HTTP through gunicorn: /healthz, a static file, an LDAP login, and a discover job
   queued from the admin that the packaged worker runs to success;
6. a second worker on the same database and broker: 20 jobs, each delivered twice, each
   run exactly once;
7. a purge: no process left, the user's files gone.

The steps share one installation (building it is most of the time), so they run in this
order; each later test needs only the fixtures it names.
"""

from __future__ import annotations

import grp
import http.cookiejar
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import redis
from celery import Celery

from instances.jobs.runner import worker_host
from lab import fleet, state
from tests.deploy.units import UNIT_DIR, Service

pytestmark = [pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "deb"
LOGS = REPO / "build" / "deploy-test"
UNITS = ("elephaas-web", "elephaas-worker", "elephaas-beat")
VENV = Path("/opt/venvs/elephaas")
STATE = Path("/var/lib/elephaas")
ETC = Path("/etc/elephaas")
KEY = STATE / ".ssh" / "id_ed25519"
# A metadata database and a broker database of the package's own: the demo's `elephaas`
# database and the test run's are left alone.
PKG_DB = os.environ.get("ELEPHAAS_TEST_DB_NAME", "test_elephaas") + "_pkg"
PKG_BROKER = f"redis://127.0.0.1:{fleet.REDIS_PORT}/13"
# Marks the lines this test adds to the lab servers' authorized_keys.
TRUST_MARK = "elephaas-deploy-test"
HOST = socket.gethostname()
JOBS = 20


def run(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


def apt_env() -> dict[str, str]:
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def installed() -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", "elephaas"], capture_output=True, text=True
    )
    return done.stdout.strip() not in ("", "not-installed", "config-files")


def purge() -> subprocess.CompletedProcess:
    return run(["apt-get", "purge", "-y", "-q", "elephaas"], env=apt_env(), timeout=300)


def elephaas_processes() -> list[str]:
    """Live processes of the elephaas user (zombies have ended; only their parent's
    bookkeeping is left)."""
    done = subprocess.run(
        ["ps", "-u", "elephaas", "-o", "pid=,stat=,args="], capture_output=True, text=True
    )
    return [line for line in done.stdout.splitlines() if line.split()[1][0] != "Z"]


def manage(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run(["elephaas-manage", *args], timeout=300, **kwargs)


def add_server(server, *extra: str) -> None:
    """A lab server in the package's inventory, its host key pinned, as the lab adds it."""
    manage(
        "add_server",
        server.hostname,
        "--environment",
        "deploy-test",
        "--port",
        str(server.ssh_port),
        "--user",
        server.ssh_user,
        "--fingerprint",
        server.host_key_fingerprint,
        *extra,
    )


def timed(timings: dict[str, float], name: str, started: float) -> None:
    timings[name] = round(time.monotonic() - started, 1)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")


# --- the lab, seen by the package -----------------------------------------------------------


def meta_connect(dbname: str):
    conn = psycopg2.connect(
        host=fleet.META_ADDRESS,
        port=fleet.META_PORT,
        user="elephaas",
        password=state.secret("metadb_password"),
        dbname=dbname,
        connect_timeout=5,
    )
    conn.autocommit = True
    return conn


def admin_sql(*statements: str) -> None:
    # Not `with conn`: psycopg2 opens a transaction there, and DROP DATABASE refuses one.
    conn = meta_connect("postgres")
    try:
        with conn.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)
    finally:
        conn.close()


def reset_database() -> None:
    assert re.fullmatch(r"[a-z0-9_]+", PKG_DB), PKG_DB
    admin_sql(
        f'DROP DATABASE IF EXISTS "{PKG_DB}" WITH (FORCE)',
        f'CREATE DATABASE "{PKG_DB}" OWNER elephaas',
    )


def drop_database() -> None:
    admin_sql(f'DROP DATABASE IF EXISTS "{PKG_DB}" WITH (FORCE)')


def query(sql: str, params: tuple = ()) -> list[tuple]:
    conn = meta_connect(PKG_DB)
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        conn.close()


def rewrite_authorized_keys(server: state.LabServer, add: str | None) -> None:
    """Drop this test's lines from a lab server's authorized_keys, then add `add`. The new
    file replaces the old in one rename, owner and mode kept: a concurrent login never
    reads half a file."""
    path = server.folder / "lib" / ".ssh" / "authorized_keys"
    info = path.stat()
    lines = [line for line in path.read_text().splitlines() if not line.endswith(TRUST_MARK)]
    if add:
        lines.append(add)
    new = path.with_name(f".authorized_keys.{os.getpid()}")
    new.write_text("\n".join(lines) + "\n")
    os.chown(new, info.st_uid, info.st_gid)
    os.chmod(new, stat.S_IMODE(info.st_mode))
    os.replace(new, path)


def lab_servers() -> list[state.LabServer]:
    servers = state.servers()[:2]
    assert len(servers) == 2, "the lab needs 2 servers"
    return servers


def configure(free_port: int) -> dict[str, str]:
    """Fill /etc/elephaas/elephaas.env as an admin would: the lab's values, uncommented in
    place; secrets copied next to it, readable by the elephaas group only."""
    lab_values = {}
    for line in state.ENV_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            lab_values[key] = value
    values = {}
    for key, value in lab_values.items():
        if key in ("ELEPHAAS_SECRET_KEY_FILE", "ELEPHAAS_SSH_KEY"):
            continue  # the package's own, generated by postinst
        if key.endswith("_FILE"):
            target = ETC / Path(value).name
            shutil.copyfile(value, target)
            os.chown(target, 0, grp.getgrnam("elephaas").gr_gid)
            os.chmod(target, 0o640)
            value = str(target)
        values[key] = value
    values.update(
        ELEPHAAS_DB_NAME=PKG_DB,
        ELEPHAAS_BROKER_URL=PKG_BROKER,
        ELEPHAAS_WEB_BIND=f"127.0.0.1:{free_port}",
        ELEPHAAS_WEB_WORKERS="2",
        ELEPHAAS_WORKER_CONCURRENCY="4",
    )
    env_file = ETC / "elephaas.env"
    lines = env_file.read_text().splitlines()
    for key, value in values.items():
        pattern = re.compile(rf"^#?{re.escape(key)}=")
        hits = [i for i, line in enumerate(lines) if pattern.match(line)]
        assert len(hits) == 1, f"{key} is on {len(hits)} lines of {env_file}, not 1"
        lines[hits[0]] = f"{key}={value}"
    env_file.write_text("\n".join(lines) + "\n")
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    """A client with cookies, as a person's browser: the admin's CSRF token from its cookie."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def request(self, path: str, data: dict | None = None, headers: dict | None = None):
        body = None
        if data is not None:
            token = next(c.value for c in self.jar if c.name == "csrftoken")
            body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": token}, doseq=True)
        req = urllib.request.Request(
            self.base + path, data=body.encode() if body else None, headers=headers or {}
        )
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, response.url, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.url, error.headers, error.read()

    def text(self, path: str, data: dict | None = None) -> tuple[int, str, str]:
        status, url, _, body = self.request(path, data)
        return status, urllib.parse.urlsplit(url).path, body.decode()


def wait_for_job(job_id: int, timeout: float = 90) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        rows = query(
            "SELECT state, worker, summary, error FROM instances_job WHERE id = %s", (job_id,)
        )
        if rows and rows[0][0] in ("succeeded", "failed", "errored", "cancelled"):
            return rows[0]
        assert time.monotonic() < deadline, f"job #{job_id} still {rows} after {timeout}s"
        time.sleep(0.3)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timings() -> dict[str, float]:
    return {}


@pytest.fixture(scope="module")
def package(lab, timings) -> Iterator[Path]:
    """Built and installed; purged at the end whatever happened."""
    if os.geteuid() != 0:
        pytest.fail("tests/deploy installs a package: run as root")
    LOGS.mkdir(parents=True, exist_ok=True)
    if installed():
        purge()  # a leftover of an earlier run
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ELEPHAAS_", "DJANGO_"))}
    with open(LOGS / "make-deb.log", "w") as log:
        done = subprocess.run(
            ["make", "deb"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1200
        )
    assert done.returncode == 0, f"make deb failed; see {LOGS / 'make-deb.log'}"
    timed(timings, "make deb (build and lintian)", started)
    debs = sorted(BUILD.glob("elephaas_*.deb"))
    assert len(debs) == 1, debs
    started = time.monotonic()
    run(
        ["apt-get", "install", "-y", "-q", f"./{debs[0].relative_to(REPO)}"],
        cwd=REPO,
        env=apt_env(),
    )
    timed(timings, "apt-get install", started)
    yield debs[0]
    if installed():
        purge()


@pytest.fixture(scope="module")
def controller(package, timings) -> Iterator[dict]:
    """The three services running against the lab, as a configured controller's would."""
    started = time.monotonic()
    servers = lab_servers()
    public = KEY.with_suffix(".pub").read_text().split()
    for server in servers:
        rewrite_authorized_keys(server, f"{public[0]} {public[1]} {TRUST_MARK}")
    reset_database()
    redis.Redis.from_url(PKG_BROKER).flushdb()
    port = free_port()
    values = configure(port)
    services = {name: Service(name, LOGS / f"{name}.log") for name in UNITS}
    for service in services.values():
        service.log.unlink(missing_ok=True)
    try:
        pids = {name: service.start() for name, service in services.items()}
        timed(timings, "services started (migrations included)", started)
        yield {
            "services": services,
            "pids": pids,
            "base": f"http://127.0.0.1:{port}",
            "servers": servers,
            "values": values,
        }
    finally:
        for service in services.values():
            service.stop()
        for server in servers:
            rewrite_authorized_keys(server, None)
        drop_database()
        redis.Redis.from_url(PKG_BROKER).flushdb()


@pytest.fixture(scope="module")
def celery_client() -> Iterator[Celery]:
    """A Celery client on the package's broker, for pings."""
    app = Celery("deploy-test", broker=PKG_BROKER, backend=PKG_BROKER)
    yield app
    app.close()


def wait_for_workers(app: Celery, names: set[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    answered: set[str] = set()
    while not names <= answered:
        assert time.monotonic() < deadline, f"workers {names - answered} did not answer"
        answered |= {name for reply in app.control.ping(timeout=1) for name in reply}


# --- the tests, in the order of the module docstring -----------------------------------------


def test_it_installs_the_user_the_keys_and_the_configuration(package) -> None:
    account = pwd.getpwnam("elephaas")
    assert account.pw_dir == str(STATE)
    assert account.pw_shell == "/usr/sbin/nologin"
    for path, mode, owner in [
        (STATE, 0o750, "elephaas"),
        (KEY.parent, 0o700, "elephaas"),
        (KEY, 0o600, "elephaas"),
        (ETC / "secret_key", 0o640, "root"),
        # It may hold a broker URL with a password.
        (ETC / "elephaas.env", 0o640, "root"),
    ]:
        info = path.stat()
        assert (oct(stat.S_IMODE(info.st_mode)), pwd.getpwuid(info.st_uid).pw_name) == (
            oct(mode),
            owner,
        ), path
    for path in (ETC / "secret_key", ETC / "elephaas.env"):
        assert grp.getgrgid(path.stat().st_gid).gr_name == "elephaas", path
    assert KEY.with_suffix(".pub").read_text().startswith("ssh-ed25519 ")
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "elephaas"]).stdout
    assert "/etc/elephaas/elephaas.env" in conffiles
    assert "/etc/elephaas/local_settings.py" in conffiles
    # What /etc/elephaas/local_settings.py points to, readable as it is.
    assert Path("/usr/share/doc/elephaas/local_settings.example.py").is_file()
    # Static files were collected by postinst, gzip copies included, and the code compiled.
    assert (STATE / "static" / "admin" / "css" / "base.css").is_file()
    assert (STATE / "static" / "admin" / "css" / "base.css.gz").is_file()
    assert list(Path("/usr/share/elephaas/elephaas/__pycache__").glob("settings.*.pyc"))
    # Only runtime requirements: the test tooling stays out, and so do pip and setuptools.
    site = VENV / "lib" / "python3.11" / "site-packages"
    assert (site / "gunicorn").is_dir() and (site / "whitenoise").is_dir()
    assert not list(site.glob("pytest*")) and not (site / "pip").exists()


def test_its_manage_wrapper_runs_as_elephaas_with_the_env_file(package) -> None:
    script = (
        "import getpass, os; from django.conf import settings; "
        "print(getpass.getuser(), os.environ['ELEPHAAS_ENV_FILE'], "
        "os.environ.get('CALLERS_OWN'), settings.STATIC_ROOT, settings.SSH_PRIVATE_KEY)"
    )
    done = manage("shell", "-c", script, env=dict(os.environ, CALLERS_OWN="leaked"))
    assert done.stdout.strip().splitlines()[-1].split() == [
        "elephaas",
        "/etc/elephaas/elephaas.env",
        "None",
        "/var/lib/elephaas/static",
        str(KEY),
    ]


def test_its_units_pass_systemd_analyze(package) -> None:
    units = [str(UNIT_DIR / f"{name}.service") for name in UNITS]
    # Works without systemd as PID 1: it loads the units as systemd would and checks
    # every directive and that each Exec* program exists.
    verify = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    for unit in units:
        security = run(["systemd-analyze", "security", "--offline=yes", unit]).stdout
        level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security).group(1))
        # systemd's scale: up to 2.0 "OK", 10 for an unhardened service.
        assert level <= 2.0, f"{unit}: exposure {level}\n{security}"
    for name in UNITS:
        service = Service(name, LOGS / "unused.log").unit
        assert service["Restart"] == ["on-failure"]
        assert service["EnvironmentFile"] == ["/etc/elephaas/elephaas.env"]
        assert service["User"] == ["elephaas"]


def test_it_serves_health_static_files_and_ldap_logins_and_runs_jobs(
    controller, celery_client
) -> None:
    base = controller["base"]
    browser = Browser(base)

    status, _, body = browser.text("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok", "database": "ok", "broker": "ok"})

    # WhiteNoise serves the collected files from gunicorn, compressed when asked.
    status, _, headers, body = browser.request(
        "/static/admin/css/base.css", headers={"Accept-Encoding": "gzip"}
    )
    assert status == 200 and headers["Content-Encoding"] == "gzip"

    # DEBUG is off: an unknown page is a plain 404, not Django's debug page.
    status, _, body = browser.text("/no-such-page")
    assert status == 404 and "URLconf" not in body

    # The packaged worker answers, and it is the unit's main process (exec kept its pid).
    worker_pid = controller["pids"]["elephaas-worker"]
    reply = celery_client.send_task("elephaas.ping", args=["deploy"]).get(timeout=90)
    assert reply["worker_pid"] == worker_pid
    cmdline = Path(f"/proc/{worker_pid}/cmdline").read_text().split("\0")
    assert cmdline[cmdline.index("--concurrency") + 1] == "4"
    assert cmdline[cmdline.index("--pool") + 1] == "threads"

    # An LDAP user logs in through gunicorn (alice: the dba role).
    alice = fleet.ldap_users()["alice"]
    status, path, _ = browser.text("/admin/login/")
    assert status == 200
    status, path, body = browser.text(
        "/admin/login/?next=/admin/", {"username": "alice", "password": alice["password"]}
    )
    assert (status, path) == (200, "/admin/"), body[-2000:]
    assert "Log out" in body

    # A lab server added with its host key pinned, as the lab does, then discovered from
    # the admin: the confirmation page, then the job, run by the packaged worker.
    server = controller["servers"][0]
    add_server(server)
    [(server_id,)] = query(
        "SELECT id FROM instances_server WHERE hostname = %s", (server.hostname,)
    )
    action = {"action": "discover_instances", "_selected_action": [server_id]}
    status, _, body = browser.text("/admin/instances/server/", action)
    assert status == 200 and server.hostname in body
    status, _, body = browser.text("/admin/instances/server/", {**action, "confirm": "yes"})
    assert status == 200
    job_id = int(re.search(r"1 job\(s\) queued: #(\d+)", body).group(1))
    job_state, worker, summary, error = wait_for_job(job_id)
    assert job_state == "succeeded", error
    # The packaged worker runs on this host: the same hostname, boot and PID namespace.
    assert worker == f"{worker_host()}:{worker_pid}"
    assert query("SELECT requested_by_name FROM instances_job WHERE id = %s", (job_id,)) == [
        ("alice",)
    ]


def test_two_workers_run_each_job_once(controller, celery_client) -> None:
    """A second worker on the same database and broker (a second controller); 20 jobs, each
    sent to the broker twice, as a resend or a broker hiccup would: every job runs once."""
    for server in controller["servers"][1:]:
        add_server(server, "--if-missing")
    second = Service(
        "elephaas-worker", LOGS / "second-worker.log", extra_args=["--hostname", "second@%h"]
    )
    second.log.unlink(missing_ok=True)
    second.start()
    try:
        wait_for_workers(celery_client, {f"elephaas@{HOST}", f"second@{HOST}"})
        script = f"""
import json
from celery import current_app
from instances.jobs import queue
from instances.models import JobKind, JobOrigin, Server
servers = list(Server.objects.order_by("hostname"))
targets = [servers[i % len(servers)] for i in range({JOBS})]
jobs = queue.create_jobs(JobKind.CHECK_SERVER, targets, origin=JobOrigin.CLI)
for job in jobs:
    current_app.send_task(queue.RUN_JOB_TASK, args=[job.pk], task_id=job.task_id)
print(json.dumps([job.pk for job in jobs]))
"""
        job_ids = json.loads(manage("shell", "-c", script).stdout.strip().splitlines()[-1])
        assert len(job_ids) == JOBS
        ended = {job_id: wait_for_job(job_id) for job_id in job_ids}
        assert {job_id: row[0] for job_id, row in ended.items()} == dict.fromkeys(
            job_ids, "succeeded"
        ), {job_id: row[3] for job_id, row in ended.items()}
        # Each ran once: one step each (check_server has one), never two.
        steps = dict(
            query(
                "SELECT job_id, count(*) FROM instances_jobstep WHERE job_id = ANY(%s) "
                "GROUP BY job_id",
                (job_ids,),
            )
        )
        assert steps == dict.fromkeys(job_ids, 1)
        # Both workers took jobs: the sharing happened.
        pids = {controller["pids"]["elephaas-worker"], second.process.pid}
        claimers = {int(row[1].rsplit(":", 1)[1]) for row in ended.values()}
        assert claimers == pids, (claimers, pids)
        # And every second delivery found its job taken: one refusal per job in the logs.
        deadline = time.monotonic() + 30
        while True:
            logs = controller["services"]["elephaas-worker"].log.read_text()
            logs += second.log.read_text()
            refused = [int(n) for n in re.findall(r"job #(\d+) not claimed: it is", logs)]
            if len(refused) >= JOBS or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sorted(refused) == sorted(job_ids)
    finally:
        second.stop()


def test_a_purge_leaves_no_process_and_removes_its_files(controller, package) -> None:
    services = controller["services"]
    assert all(service.running() for service in services.values())
    purge()
    # Without systemd, prerm stops what runs as the package's user, as systemd would.
    for name, service in services.items():
        try:
            service.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} still runs after the purge")
    assert elephaas_processes() == []
    assert not installed()
    for path in [
        VENV,
        Path("/usr/share/elephaas"),
        ETC,
        STATE,
        Path("/usr/bin/elephaas-manage"),
        *(UNIT_DIR / f"{name}.service" for name in UNITS),
        *(
            Path("/etc/systemd/system/multi-user.target.wants") / f"{name}.service"
            for name in UNITS
        ),
    ]:
        assert not path.exists(), f"{path} is still there after the purge"
    # The account stays, as Debian keeps system users: files elsewhere may carry its uid.
    assert pwd.getpwnam("elephaas").pw_dir == str(STATE)
