"""Copy to elephaas/local_settings.py to override settings in Python.

On a controller installed from the Debian package, write /etc/elephaas/local_settings.py
instead (ELEPHAAS_LOCAL_SETTINGS): it runs after this one, in the settings' namespace.

Normally you do not need this file: every setting below is read from an environment
variable (see README.md, "Settings"; on a controller, /etc/elephaas/elephaas.env), and
variables ending in _FILE name a file holding a secret. Use local_settings.py only for what
an environment variable cannot express. Values shown are the defaults.
"""

# --- Django ----------------------------------------------------------------------------
# ELEPHAAS_SECRET_KEY / ELEPHAAS_SECRET_KEY_FILE   (required)
# ELEPHAAS_DEBUG=false
# ELEPHAAS_ALLOWED_HOSTS=127.0.0.1,localhost
# ELEPHAAS_CSRF_TRUSTED_ORIGINS=
# ELEPHAAS_TIME_ZONE=UTC
# ELEPHAAS_STATIC_ROOT=<repo>/staticfiles
# ELEPHAAS_LOG_LEVEL=INFO
# ELEPHAAS_ENV_FILE=$LAB_DIR/elephaas.env, else <repo>/.lab/elephaas.env   (KEY=VALUE
#                   lines; never overrides the env)
# ELEPHAAS_LOCAL_SETTINGS=/etc/elephaas/local_settings.py   (run after this file)

# --- Behind TLS, behind a proxy, gunicorn ------------------------------------------------
# ELEPHAAS_SECURE_COOKIES=false   session and CSRF cookies only over HTTPS
# ELEPHAAS_HSTS_SECONDS=0         HSTS max-age (0: no header)
# ELEPHAAS_PROXY_SSL_HEADER=      e.g. X-Forwarded-Proto, set to "https" by the TLS proxy
# ELEPHAAS_WEB_BIND=127.0.0.1:8000   HOST:PORT or unix:PATH, comma-separated
# ELEPHAAS_WEB_WORKERS=3
# ELEPHAAS_WEB_TIMEOUT=60

# --- Metadata database -----------------------------------------------------------------
# ELEPHAAS_DB_HOST=127.0.0.1
# ELEPHAAS_DB_PORT=54329
# ELEPHAAS_DB_NAME=elephaas
# ELEPHAAS_DB_USER=elephaas
# ELEPHAAS_DB_PASSWORD / ELEPHAAS_DB_PASSWORD_FILE
# ELEPHAAS_DB_CONN_MAX_AGE=60
# ELEPHAAS_DB_CONNECT_TIMEOUT=5

# --- Celery ----------------------------------------------------------------------------
# ELEPHAAS_BROKER_URL=redis://127.0.0.1:6390/0
# ELEPHAAS_RESULT_BACKEND=<the broker URL>
# ELEPHAAS_WORKER_CONCURRENCY=16  threads; each running job holds 2 metadata sessions
# ELEPHAAS_JOB_LOCK_WAIT=30       seconds a job waits for a busy target
# ELEPHAAS_JOB_HEARTBEAT=2        seconds between heartbeats of a running job
# ELEPHAAS_JOB_LOST_AFTER=60      seconds without a heartbeat before a job is failed as lost
# ELEPHAAS_JOB_TIME_LIMIT=3600
# ELEPHAAS_METADATA_RETRY=60      seconds a job retries its bookkeeping on a restarting database
# ELEPHAAS_BROKER_PUBLISH_TIMEOUT=1
# ELEPHAAS_OUTBOX_INTERVAL=5      seconds between outbox sweeps
# ELEPHAAS_OUTBOX_AFTER=3
# ELEPHAAS_OUTBOX_RESEND=120
# ELEPHAAS_OUTBOX_BATCH=500

# --- Health polling ----------------------------------------------------------------------
# ELEPHAAS_HEALTH_INTERVAL=30
# ELEPHAAS_HEALTH_CONCURRENCY=256
# ELEPHAAS_HEALTH_LAG_BYTES=16777216
# ELEPHAAS_HEALTH_LAG_SECONDS=60

# --- Operations ----------------------------------------------------------------------------
# ELEPHAAS_COMMANDS_PRESET=debian   (or pg_ctl; single actions: COMMANDS below)
# ELEPHAAS_PG_BINDIR=/usr/lib/postgresql/{version}/bin
# ELEPHAAS_ACTION_WAIT=90
# ELEPHAAS_REPLICATION_USER=replicator
# ELEPHAAS_FAILOVER_MAX_LOSS_BYTES=1048576
# ELEPHAAS_SWITCHOVER_MAX_LAG_BYTES=16777216
# ELEPHAAS_SITE_DRILL_CONCURRENCY=3
# ELEPHAAS_SALVAGE_WAIT=60
# ELEPHAAS_FENCE_TIMEOUT=30
# ELEPHAAS_FENCE_RETRY=60
# ELEPHAAS_CONFIRM_PROBE_TIMEOUT=2
# COMMANDS = {"start": ["sudo", "systemctl", "start", "postgresql@{version}-{cluster}"]}
# FENCE_COMMANDS = {"prod": ["/usr/local/sbin/ipmi-off", "--host", "{hostname}"]}

# --- Health and configuration polling (Celery beat) ---------------------------------------
# ELEPHAAS_HEALTH_INTERVAL=30           seconds between sweeps
# ELEPHAAS_HEALTH_CONCURRENCY=256       probes at once (at least the number of instances)
# ELEPHAAS_HEALTH_FIRST_WRITE=1         seconds after which a sweep writes what answered
# ELEPHAAS_HEALTH_LAG_BYTES=16777216    replica lag (bytes) shown as lagging
# ELEPHAAS_HEALTH_LAG_SECONDS=60        replica lag (seconds) shown as lagging
# ELEPHAAS_HEALTH_SAMPLE_RETENTION=24   hours of health samples kept (the dashboard's lag
#                                       pictures); each sweep deletes older ones
# ELEPHAAS_SETTINGS_INTERVAL=600        seconds after which an instance's settings are read again
# ELEPHAAS_SETTINGS_GATHER_EVERY=60     seconds between gatherings of the instances due
# ELEPHAAS_SETTINGS_BATCH=50            instances one gathering reads at most

# --- Audit trail -----------------------------------------------------------------------
# ELEPHAAS_AUDIT_RETENTION_DAYS=400   days audit events are kept (0: for ever); beat
#                                     deletes older ones every hour

# --- SSH -------------------------------------------------------------------------------
# ELEPHAAS_SSH_KEY=/var/lib/elephaas/.ssh/id_ed25519   (controller key; .pub shown to DBAs)
# ELEPHAAS_SSH_USER=postgres
# ELEPHAAS_SSH_PORT=22
# ELEPHAAS_SSH_CONNECT_TIMEOUT=10
# ELEPHAAS_SSH_COMMAND_TIMEOUT=600
# ELEPHAAS_SSH_KEEPALIVE=15
# ELEPHAAS_SSH_MAX_PER_SERVER=8

# --- Managed instances (the probe) ------------------------------------------------------
# ELEPHAAS_PG_USER=elephaas
# ELEPHAAS_PG_PASSWORD / ELEPHAAS_PG_PASSWORD_FILE
# ELEPHAAS_PG_DATABASE=postgres
# ELEPHAAS_PG_CONNECT_TIMEOUT=5

# --- DNS (RFC 2136 + TSIG) --------------------------------------------------------------
# ELEPHAAS_DNS_SERVER=127.0.0.1
# ELEPHAAS_DNS_PORT=5300
# ELEPHAAS_DNS_ZONE=lab.elephaas.test.
# ELEPHAAS_DNS_TSIG_NAME=elephaas-lab
# ELEPHAAS_DNS_TSIG_ALGORITHM=hmac-sha256
# ELEPHAAS_DNS_TSIG_SECRET / ELEPHAAS_DNS_TSIG_SECRET_FILE
# ELEPHAAS_DNS_RECORD_TYPE=CNAME   (or A)
# ELEPHAAS_DNS_TTL=30
# ELEPHAAS_DNS_TIMEOUT=5

# --- LDAP (empty URI: local users only) ---------------------------------------------------
# ELEPHAAS_LDAP_URI=
# ELEPHAAS_LDAP_BIND_DN=
# ELEPHAAS_LDAP_BIND_PASSWORD / ELEPHAAS_LDAP_BIND_PASSWORD_FILE
# ELEPHAAS_LDAP_USER_BASE=ou=people,dc=elephaas,dc=test
# ELEPHAAS_LDAP_USER_FILTER=(uid=%(user)s)
# ELEPHAAS_LDAP_GROUP_BASE=ou=groups,dc=elephaas,dc=test
# ELEPHAAS_LDAP_GROUP_FILTER=(objectClass=groupOfNames)
# ELEPHAAS_LDAP_START_TLS=false   (certificate checked against the system CAs / ldap.conf)
# ELEPHAAS_LDAP_TIMEOUT=5         seconds for the connect and for each bind or search
# LDAP group (cn) -> role, mirrored at every login; an empty value maps no group:
# ELEPHAAS_LDAP_GROUP_DBA=elephaas-dba
# ELEPHAAS_LDAP_GROUP_OPERATOR=elephaas-operator
# ELEPHAAS_LDAP_GROUP_VIEWER=elephaas-viewer
# ELEPHAAS_LDAP_GROUP_SUPERUSER=elephaas-admins   (members become Django superusers)
# Further django-auth-ldap settings (AUTH_LDAP_*) can be set here, e.g.
# AUTH_LDAP_USER_ATTR_MAP = {"first_name": "givenName", "last_name": "sn", "email": "mail"}

# Example of an override that needs Python:
# LOGGING["loggers"]["elephaas.audit"] = {"handlers": ["console"], "level": "INFO"}
