"""gunicorn's configuration for the web admin (`gunicorn -c python:elephaas.gunicorn_conf`).

Read from the same environment as the settings (the unit's EnvironmentFile), with the
defaults listed in the README: a controller changes its port or its number of workers in
/etc/elephaas/elephaas.env, never in the unit.
"""

from __future__ import annotations

from elephaas.envconf import envint, envlist

# Where gunicorn listens: HOST:PORT or unix:PATH (several, comma-separated). Loopback by
# default: a TLS proxy or load balancer on the host is what people reach.
bind = envlist("ELEPHAAS_WEB_BIND", "127.0.0.1:8000")
# Sync workers: each serves one request at a time. Pages that wait (an LDAP login bounded
# by ELEPHAAS_LDAP_TIMEOUT, a confirmation page's live probes) hold one, so a few more
# than the cores.
workers = envint("ELEPHAAS_WEB_WORKERS", 3, 1, 256)
# A worker silent this long is killed and replaced. Above the default 30 s because a site
# drill's confirmation page probes every herd's members before it answers.
timeout = envint("ELEPHAAS_WEB_TIMEOUT", 60, 5)
graceful_timeout = 30
proc_name = "elephaas-web"
# To stderr, which systemd sends to the journal.
accesslog = "-"
errorlog = "-"
