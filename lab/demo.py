"""The demo fleet: two environments, four servers, three herds, each with its DR copy on
srv4 (environment dr), so that "Move to DR site" and "Fail back" work on a fresh demo.

The inventory is filled the way a DBA would fill it: each server is added with its host
key fingerprint checked against the one the lab generated (never trusted on first sight),
then discovery finds the clusters over SSH and creates the instances and herds.
"""

from __future__ import annotations

from . import fleet, herd
from .state import SECRETS_DIR, LabError, servers

# herd: (port, primary server, replica servers)
HERDS = {
    "orders": (5432, 1, [2, 4]),  # srv4 is in the dr environment: each herd's DR copy
    "billing": (5433, 2, [3, 4]),
    "reports": (5434, 3, [1, 4]),
}
ENVIRONMENTS = {1: "prod", 2: "prod", 3: "prod", 4: "dr"}


def run() -> None:
    lab_servers = {s.number: s for s in servers()}
    missing = [n for n in ENVIRONMENTS if n not in lab_servers]
    if missing:
        raise LabError(f"the demo needs servers {missing}: run `python -m lab up --servers 4`")
    for name, (port, primary, replicas) in HERDS.items():
        herd.create(name, primary, replicas, port)
        fleet.say(f"herd {name}: srv{primary} -> " + ", ".join(f"srv{n}" for n in replicas))
    for number, environment in ENVIRONMENTS.items():
        server = lab_servers[number]
        fleet.manage(
            "add_server",
            server.hostname,
            "--environment",
            environment,
            "--port",
            str(server.ssh_port),
            "--user",
            server.ssh_user,
            "--fingerprint",
            server.host_key_fingerprint,
            "--if-missing",
        )
    found = fleet.manage("discover", *(lab_servers[n].hostname for n in ENVIRONMENTS))
    for line in found.splitlines():
        fleet.say(line)
    for name in HERDS:
        for line in fleet.manage("set_vhost", name, name, "--ro-vhost", f"{name}-ro").splitlines():
            fleet.say(f"DNS: {line}")
    # Each herd's replica on srv4 (environment dr) is its acknowledged DR copy.
    for name in HERDS:
        fleet.say(
            fleet.manage(
                "acknowledge_dr", name, lab_servers[4].hostname, "--note", "the demo's DR copy"
            ).strip()
        )
    fleet.manage("ensure_demo_admin", "--password-file", str(SECRETS_DIR / "demo_admin_password"))
    fleet.start_web()
    password = (SECRETS_DIR / "demo_admin_password").read_text().strip()
    print(f"""
ElepHaaS demo is running.

  Web admin:  http://127.0.0.1:{fleet.WEB_PORT}/admin/
  Login:      admin / {password}
              (the password is kept in {SECRETS_DIR / "demo_admin_password"})
  Fleet:      environments prod and dr; servers {", ".join(s.hostname for s in servers())};
              herds {", ".join(HERDS)}, each with its DR copy on srv4 (in dr):
              Environments → prod → "Move to DR site" runs a whole-site drill
  Worker log: {fleet.LOG_DIR / "celery-worker.log"}

  Stop it:    make stop     (or: .venv/bin/python -m lab down)
""")
