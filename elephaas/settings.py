"""ElepHaaS settings.

Every value comes from an environment variable (read through the typed helpers in
envconf), with a default that works on the lab; `elephaas/local_settings.py`, then the
controller's `/etc/elephaas/local_settings.py` (ELEPHAAS_LOCAL_SETTINGS), if present, may
override anything. Every variable is listed with its default in
`elephaas/local_settings.example.py`, in the README and in the package's
`/etc/elephaas/elephaas.env` (debian/elephaas.env).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from .envconf import envbool, envfloat, envint, envlist, envsecret, envstr, load_env_file

BASE_DIR = Path(__file__).resolve().parent.parent

# The lab writes its addresses and secret-file paths here (LAB_DIR/elephaas.env, so that
# LAB_DIR=.lab-scale points a benchmark at the scale lab). On a controller the units read
# /etc/elephaas/elephaas.env (EnvironmentFile=) and `elephaas-manage` points this variable
# at that same file, so commands and services see one configuration.
_LAB_DIR = Path(os.environ["LAB_DIR"]).resolve() if os.environ.get("LAB_DIR") else BASE_DIR / ".lab"
load_env_file(Path(os.environ.get("ELEPHAAS_ENV_FILE", _LAB_DIR / "elephaas.env")))

DEBUG = envbool("ELEPHAAS_DEBUG", False)
SECRET_KEY = envsecret("ELEPHAAS_SECRET_KEY")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "ELEPHAAS_SECRET_KEY (or ELEPHAAS_SECRET_KEY_FILE) is not set; "
        "on a development machine run `python -m lab up`, which writes one"
    )
ALLOWED_HOSTS = envlist("ELEPHAAS_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = envlist("ELEPHAAS_CSRF_TRUSTED_ORIGINS", "")

# --- Behind TLS and behind a proxy ------------------------------------------------------
# Served over HTTPS (directly or by a proxy): cookies are sent only over HTTPS, so a
# session cannot leak over a plain-HTTP link to the same host name.
SECURE_COOKIES = envbool("ELEPHAAS_SECURE_COOKIES", False)
SESSION_COOKIE_SECURE = SECURE_COOKIES
CSRF_COOKIE_SECURE = SECURE_COOKIES
# HSTS: browsers refuse plain HTTP to this host for that many seconds. Only for a host
# that will stay on HTTPS; 0 sends no header. Subdomains are left alone on purpose: the
# controller's name is rarely the parent of the names other services use.
SECURE_HSTS_SECONDS = envint("ELEPHAAS_HSTS_SECONDS", 0, 0)
# A TLS-terminating proxy in front of gunicorn says the original scheme in this header
# (e.g. X-Forwarded-Proto); without it Django believes every request came over HTTP and
# CSRF refuses HTTPS form posts. Set it only when the proxy always overwrites the
# header: a client could otherwise claim HTTPS.
PROXY_SSL_HEADER = envstr("ELEPHAAS_PROXY_SSL_HEADER", "").strip()
if PROXY_SSL_HEADER:
    if not re.fullmatch(r"[A-Za-z0-9-]+", PROXY_SSL_HEADER):
        raise ImproperlyConfigured(
            f"ELEPHAAS_PROXY_SSL_HEADER={PROXY_SSL_HEADER!r} is not a header name "
            "(e.g. X-Forwarded-Proto)"
        )
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + PROXY_SSL_HEADER.upper().replace("-", "_"), "https")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "herds",
    "instances",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files from gunicorn itself (no web server needed in front of it); right after
    # SecurityMiddleware as WhiteNoise asks, so its responses get the security headers.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "elephaas.urls"
WSGI_APPLICATION = "elephaas.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Metadata database (ElepHaaS's own PostgreSQL) -------------------------------------
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": envstr("ELEPHAAS_DB_HOST", "127.0.0.1"),
        "PORT": envint("ELEPHAAS_DB_PORT", 54329, 1, 65535),
        "NAME": envstr("ELEPHAAS_DB_NAME", "elephaas"),
        "USER": envstr("ELEPHAAS_DB_USER", "elephaas"),
        "PASSWORD": envsecret("ELEPHAAS_DB_PASSWORD"),
        "CONN_MAX_AGE": envint("ELEPHAAS_DB_CONN_MAX_AGE", 60, 0),
        # A persistent connection broken by a restart of the metadata database is noticed
        # at the start of the next request or task, not as its first query's error.
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"connect_timeout": envint("ELEPHAAS_DB_CONNECT_TIMEOUT", 5, 1)},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("ELEPHAAS_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("ELEPHAAS_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
# collectstatic also writes gzip copies that WhiteNoise serves to browsers that take them.
# Not the Manifest variant: it makes every {% static %} fail until collectstatic has run,
# which a test run or the lab's runserver never does.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Celery (broker: Redis) -------------------------------------------------------------
CELERY_BROKER_URL = envstr("ELEPHAAS_BROKER_URL", "redis://127.0.0.1:6390/0")
CELERY_RESULT_BACKEND = envstr("ELEPHAAS_RESULT_BACKEND", CELERY_BROKER_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# A job is acknowledged only once its task returns, so a worker killed mid-job hands the
# message back to the broker; the task's claim step then sees the job is not `queued`
# and marks it failed instead of silently running it twice.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_RESULT_EXPIRES = 3600
WORKER_CONCURRENCY = envint("ELEPHAAS_WORKER_CONCURRENCY", 16, 1, 512)
# Jobs: how long a job waits for a busy target, how often a running job beats, and after
# how long without a beat it is declared lost (its worker died) and failed.
JOB_LOCK_WAIT = envfloat("ELEPHAAS_JOB_LOCK_WAIT", 30.0, 0)
JOB_HEARTBEAT = envfloat("ELEPHAAS_JOB_HEARTBEAT", 2.0, 0.1)
JOB_LOST_AFTER = envfloat("ELEPHAAS_JOB_LOST_AFTER", 60.0, 1)
JOB_TIME_LIMIT = envint("ELEPHAAS_JOB_TIME_LIMIT", 3600, 10)
# A running job whose metadata database connection breaks (a restart, a failover of that
# database) reconnects and retries its bookkeeping for this long before it gives up; its
# target locks are taken again before its next step, or it stops there.
METADATA_RETRY = envfloat("ELEPHAAS_METADATA_RETRY", 60.0, 0)
# Health polling (Celery beat): how often every instance is probed, how many probes run
# at once, and the replica lag (bytes / seconds) past which a replica is shown as lagging.
HEALTH_INTERVAL = envfloat("ELEPHAAS_HEALTH_INTERVAL", 30.0, 1)
# Enough probe threads for a fleet of hundreds at once: a probe that waits on a silent
# address holds its thread until PG_PROBE_CONNECT_TIMEOUT, and with 32 threads 50 such
# addresses made a 200-instance sweep 10 s instead of 5 (bench_health). What answered
# within HEALTH_FIRST_WRITE seconds is written at once, the silent ones when they time out.
HEALTH_CONCURRENCY = envint("ELEPHAAS_HEALTH_CONCURRENCY", 256, 1, 4096)
HEALTH_FIRST_WRITE = envfloat("ELEPHAAS_HEALTH_FIRST_WRITE", 1.0, 0)
HEALTH_LAG_BYTES = envint("ELEPHAAS_HEALTH_LAG_BYTES", 16 * 1024 * 1024, 0)
HEALTH_LAG_SECONDS = envfloat("ELEPHAAS_HEALTH_LAG_SECONDS", 60.0, 0)
# Each sweep keeps a sample per instance (online, lag) for the dashboard's lag pictures and
# deletes those older than this many hours.
HEALTH_SAMPLE_RETENTION = envint("ELEPHAAS_HEALTH_SAMPLE_RETENTION", 24, 1, 24 * 366)
# The broker only rings the bell; the jobs table is the queue of record. A request waits
# at most this long for the broker to take a job; the outbox sweep (every OUTBOX_INTERVAL
# seconds, and when a worker starts) sends again what it did not take after OUTBOX_AFTER
# seconds, and what is still unclaimed OUTBOX_RESEND seconds after it was sent.
BROKER_PUBLISH_TIMEOUT = envfloat("ELEPHAAS_BROKER_PUBLISH_TIMEOUT", 1.0, 0.1)
OUTBOX_INTERVAL = envfloat("ELEPHAAS_OUTBOX_INTERVAL", 5.0, 1)
OUTBOX_AFTER = envfloat("ELEPHAAS_OUTBOX_AFTER", 3.0, 0)
OUTBOX_RESEND = envfloat("ELEPHAAS_OUTBOX_RESEND", 120.0, 10)
OUTBOX_BATCH = envint("ELEPHAAS_OUTBOX_BATCH", 500, 1)
# Each instance's non-default settings (pg_settings) are read again after SETTINGS_INTERVAL
# seconds; a beat task every SETTINGS_GATHER_EVERY seconds reads at most SETTINGS_BATCH
# of those due, oldest first, so the fleet's size never makes a burst of probes.
SETTINGS_INTERVAL = envfloat("ELEPHAAS_SETTINGS_INTERVAL", 600.0, 10)
SETTINGS_GATHER_EVERY = envfloat("ELEPHAAS_SETTINGS_GATHER_EVERY", 60.0, 1)
SETTINGS_BATCH = envint("ELEPHAAS_SETTINGS_BATCH", 50, 1, 10000)
# The audit trail (instances.audit) keeps its rows this many days (0: for ever); beat
# deletes older ones every AUDIT_PRUNE_INTERVAL seconds, a batch at a time.
AUDIT_RETENTION_DAYS = envint("ELEPHAAS_AUDIT_RETENTION_DAYS", 400, 0)
AUDIT_PRUNE_INTERVAL = 3600.0
CELERY_BEAT_SCHEDULE = {
    "poll-health": {"task": "instances.poll_health", "schedule": HEALTH_INTERVAL},
    "reap-lost-jobs": {"task": "instances.reap_lost_jobs", "schedule": 30.0},
    "gather-settings": {
        "task": "instances.gather_settings",
        "schedule": SETTINGS_GATHER_EVERY,
        "options": {"expires": SETTINGS_GATHER_EVERY},
    },
    "send-waiting-jobs": {
        "task": "instances.send_waiting_jobs",
        "schedule": OUTBOX_INTERVAL,
        "options": {"expires": OUTBOX_INTERVAL},
    },
    "advance-campaigns": {
        "task": "instances.advance_campaigns",
        "schedule": OUTBOX_INTERVAL,
        "options": {"expires": OUTBOX_INTERVAL},
    },
    "prune-audit-events": {
        "task": "instances.prune_audit_events",
        "schedule": AUDIT_PRUNE_INTERVAL,
        "options": {"expires": AUDIT_PRUNE_INTERVAL},
    },
}

# --- SSH to managed servers -------------------------------------------------------------
# The Debian package's postinst generates this key (owned by the elephaas user, 0600).
SSH_PRIVATE_KEY = envstr("ELEPHAAS_SSH_KEY", "/var/lib/elephaas/.ssh/id_ed25519")
SSH_DEFAULT_USER = envstr("ELEPHAAS_SSH_USER", "postgres")
SSH_DEFAULT_PORT = envint("ELEPHAAS_SSH_PORT", 22, 1, 65535)
SSH_CONNECT_TIMEOUT = envfloat("ELEPHAAS_SSH_CONNECT_TIMEOUT", 10.0, 0.1)
SSH_COMMAND_TIMEOUT = envfloat("ELEPHAAS_SSH_COMMAND_TIMEOUT", 600.0, 0.1)
SSH_KEEPALIVE = envint("ELEPHAAS_SSH_KEEPALIVE", 15, 0)
# At most this many commands run at once on one server from one worker process, so a
# bulk action over 200 instances does not start 200 pg_ctl processes on one host. A DR
# site's server holds one DR copy per herd: with 4, a 6-herd failback queued its rejoins
# (Debian's pg_ctlcluster start polls in 0.5 s steps however fast PostgreSQL is): 7.5 s
# against 5.0 s with 8 (bench_site_drill). A drill's write-gap commands bypass it (urgent).
SSH_MAX_PER_SERVER = envint("ELEPHAAS_SSH_MAX_PER_SERVER", 8, 1, 256)

# --- Commands run on managed servers (instances/commands.py) ----------------------------
# A preset ("debian": pg_ctlcluster; "pg_ctl": the server's own pg_ctl on the data
# directory); local_settings.py may override single actions in COMMANDS, e.g.
# COMMANDS = {"start": ["sudo", "systemctl", "start", "postgresql@{version}-{cluster}"]}.
COMMANDS_PRESET = envstr("ELEPHAAS_COMMANDS_PRESET", "debian")
COMMANDS: dict[str, list[str]] = {}
PG_BINDIR = envstr("ELEPHAAS_PG_BINDIR", "/usr/lib/postgresql/{version}/bin")
# How long an action waits for PostgreSQL to confirm its result (accepting connections,
# out of recovery, stopped).
ACTION_WAIT = envfloat("ELEPHAAS_ACTION_WAIT", 90.0, 1)
# Replication role written into primary_conninfo when a replica is (re)pointed; its
# password lives in ~postgres/.pgpass on each server, never in ElepHaaS.
REPLICATION_USER = envstr("ELEPHAAS_REPLICATION_USER", "replicator")
# A failover that may lose more WAL than this (bytes between the old primary's last known
# position and the best replica) is refused unless the DBA ticks "accept data loss".
FAILOVER_MAX_LOSS_BYTES = envint("ELEPHAAS_FAILOVER_MAX_LOSS_BYTES", 1024 * 1024, 0)
# A switchover refuses a target further behind its primary than this (the primary would
# stay stopped while it replays), and a site drill's pre-flight gate uses the same limit.
SWITCHOVER_MAX_LAG_BYTES = envint("ELEPHAAS_SWITCHOVER_MAX_LAG_BYTES", 16 * 1024 * 1024, 0)
# A site drill runs at most this many herds' switchovers at once unless the DBA says.
SITE_DRILL_CONCURRENCY = envint("ELEPHAAS_SITE_DRILL_CONCURRENCY", 3, 1, 100)
# Switchover and failover confirmation pages probe every member of the selected herds live,
# each bounded by this many seconds (connect and query).
CONFIRM_PROBE_TIMEOUT = envfloat("ELEPHAAS_CONFIRM_PROBE_TIMEOUT", 2.0, 1)
# A failover whose old primary's disk still answers SSH copies the WAL the candidate lacks
# from it (salvage) and waits this long, at most, for the copy and its replay.
SALVAGE_WAIT = envfloat("ELEPHAAS_SALVAGE_WAIT", 60.0, 1)
# Fencing an old primary whose server does not answer: a command run on the controller per
# environment name ("*": every other), e.g. in local_settings.py
#   FENCE_COMMANDS = {"prod": ["/usr/local/sbin/ipmi-off", "--host", "{hostname}"]}
# Values: {hostname} {port} {herd} {environment} {instance}, each one argument.
FENCE_COMMANDS: dict[str, list[str]] = {}
FENCE_TIMEOUT = envfloat("ELEPHAAS_FENCE_TIMEOUT", 30.0, 1)
# A fenced instance whose fence is not confirmed: the health sweep tries to finish it when
# its server answers again, at most this often (seconds).
FENCE_RETRY = envfloat("ELEPHAAS_FENCE_RETRY", 60.0, 1)

# --- Connections to managed PostgreSQL instances (the probe) ---------------------------
PG_PROBE_USER = envstr("ELEPHAAS_PG_USER", "elephaas")
PG_PROBE_PASSWORD = envsecret("ELEPHAAS_PG_PASSWORD")
PG_PROBE_DATABASE = envstr("ELEPHAAS_PG_DATABASE", "postgres")
PG_PROBE_CONNECT_TIMEOUT = envint("ELEPHAAS_PG_CONNECT_TIMEOUT", 5, 1)

# --- DNS (RFC 2136 updates signed with TSIG) -------------------------------------------
DNS_SERVER = envstr("ELEPHAAS_DNS_SERVER", "127.0.0.1")
DNS_PORT = envint("ELEPHAAS_DNS_PORT", 5300, 1, 65535)
DNS_ZONE = envstr("ELEPHAAS_DNS_ZONE", "lab.elephaas.test.")
DNS_TSIG_NAME = envstr("ELEPHAAS_DNS_TSIG_NAME", "elephaas-lab")
DNS_TSIG_ALGORITHM = envstr("ELEPHAAS_DNS_TSIG_ALGORITHM", "hmac-sha256")
DNS_TSIG_SECRET = envsecret("ELEPHAAS_DNS_TSIG_SECRET")
DNS_RECORD_TYPE = envstr("ELEPHAAS_DNS_RECORD_TYPE", "CNAME")
DNS_TTL = envint("ELEPHAAS_DNS_TTL", 30, 0)
DNS_TIMEOUT = envfloat("ELEPHAAS_DNS_TIMEOUT", 5.0, 0.1)

# --- LDAP (empty URI: local users only) ------------------------------------------------
# With a URI, a login is checked by LDAP (elephaas/auth.py), then by Django's own users,
# where the break-glass superuser lives: local accounts with a password are never sent to
# LDAP, so they work while LDAP is down. At each LDAP login the user's LDAP groups (cn)
# are mirrored onto the roles, the Django groups made by herds/migrations/0004_roles.py.
import ldap  # noqa: E402
from django_auth_ldap.config import GroupOfNamesType, LDAPSearch  # noqa: E402

LDAP_URI = envstr("ELEPHAAS_LDAP_URI", "")
LDAP_BIND_DN = envstr("ELEPHAAS_LDAP_BIND_DN", "")
LDAP_BIND_PASSWORD = envsecret("ELEPHAAS_LDAP_BIND_PASSWORD")
LDAP_USER_BASE = envstr("ELEPHAAS_LDAP_USER_BASE", "ou=people,dc=elephaas,dc=test")
LDAP_USER_FILTER = envstr("ELEPHAAS_LDAP_USER_FILTER", "(uid=%(user)s)")
LDAP_GROUP_BASE = envstr("ELEPHAAS_LDAP_GROUP_BASE", "ou=groups,dc=elephaas,dc=test")
LDAP_GROUP_FILTER = envstr("ELEPHAAS_LDAP_GROUP_FILTER", "(objectClass=groupOfNames)")
LDAP_START_TLS = envbool("ELEPHAAS_LDAP_START_TLS", False)
LDAP_TIMEOUT = envint("ELEPHAAS_LDAP_TIMEOUT", 5, 1)
# Role (Django group) -> LDAP group cn; an empty name gives that role to no LDAP group.
LDAP_ROLE_GROUPS = {
    "dba": envstr("ELEPHAAS_LDAP_GROUP_DBA", "elephaas-dba"),
    "operator": envstr("ELEPHAAS_LDAP_GROUP_OPERATOR", "elephaas-operator"),
    "viewer": envstr("ELEPHAAS_LDAP_GROUP_VIEWER", "elephaas-viewer"),
}
LDAP_SUPERUSER_GROUP = envstr("ELEPHAAS_LDAP_GROUP_SUPERUSER", "elephaas-admins")

AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
if LDAP_URI:
    AUTHENTICATION_BACKENDS.insert(0, "elephaas.auth.ElephaasLDAPBackend")
AUTH_LDAP_SERVER_URI = LDAP_URI
AUTH_LDAP_BIND_DN = LDAP_BIND_DN
AUTH_LDAP_BIND_PASSWORD = LDAP_BIND_PASSWORD
AUTH_LDAP_START_TLS = LDAP_START_TLS
AUTH_LDAP_USER_SEARCH = LDAPSearch(LDAP_USER_BASE, ldap.SCOPE_SUBTREE, LDAP_USER_FILTER)
AUTH_LDAP_GROUP_SEARCH = LDAPSearch(LDAP_GROUP_BASE, ldap.SCOPE_SUBTREE, LDAP_GROUP_FILTER)
AUTH_LDAP_GROUP_TYPE = GroupOfNamesType(name_attr="cn")
AUTH_LDAP_USER_ATTR_MAP = {"first_name": "givenName", "last_name": "sn", "email": "mail"}
# Names, e-mail and (in elephaas/auth.py) roles are refreshed at every login.
AUTH_LDAP_ALWAYS_UPDATE_USER = True
# Without these a dead or hung LDAP server holds a login, and a web worker, for minutes:
# NETWORK_TIMEOUT bounds the TCP connect, TIMEOUT each bind, search and StartTLS.
AUTH_LDAP_CONNECTION_OPTIONS = {
    ldap.OPT_NETWORK_TIMEOUT: LDAP_TIMEOUT,
    ldap.OPT_TIMEOUT: LDAP_TIMEOUT,
    ldap.OPT_REFERRALS: 0,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("ELEPHAAS_LOG_LEVEL", "INFO")},
    "loggers": {"paramiko": {"level": "WARNING"}},
}

try:
    from .local_settings import *  # noqa: F403
except ImportError:
    pass

# The controller's own overrides, kept in /etc with its other configuration so that an
# upgrade of the package (which replaces the code folder) never loses them. Run in this
# module's namespace, so the file may change settings in place, e.g.
# LOGGING["loggers"]["elephaas.audit"] = {...}.
LOCAL_SETTINGS = Path(envstr("ELEPHAAS_LOCAL_SETTINGS", "/etc/elephaas/local_settings.py"))
if LOCAL_SETTINGS.is_file():
    exec(compile(LOCAL_SETTINGS.read_text(), str(LOCAL_SETTINGS), "exec"))  # noqa: S102
