"""Benchmark: commands over the pooled SSH connection versus a new connection each time.

Runs `true` N times on lab server 1 through `instances.ssh.run`, first reusing the pooled
transport, then with `fresh=True` (TCP connect, key exchange, host key check and
public-key login for every command). Prints the totals, the cost per command and the
ratio reused/fresh; the goal is a ratio of at most 1/5.

    .venv/bin/python bench/bench_ssh.py [--count 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "elephaas.settings")

import django  # noqa: E402

django.setup()

from instances import ssh  # noqa: E402
from lab import state  # noqa: E402

GOAL = 1 / 5


def timed(server: state.LabServer, count: int, fresh: bool) -> float:
    started = time.perf_counter()
    for _ in range(count):
        ssh.run(server, ["true"], fresh=fresh)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="commands per mode (100)")
    args = parser.parse_args()
    if not state.is_up() or not state.servers():
        print("the lab is not up: run `python -m lab up`", file=sys.stderr)
        return 2
    server = state.servers()[0]

    # Warm-up outside the measurement: key file read, imports, the pooled connection.
    ssh.run(server, ["true"])
    ssh.run(server, ["true"], fresh=True)
    opened_before = ssh.pool_stats().connections_opened

    reused = timed(server, args.count, fresh=False)
    reused_connections = ssh.pool_stats().connections_opened - opened_before
    fresh = timed(server, args.count, fresh=True)
    ssh.close_all()

    ratio = reused / fresh
    print(
        f"SSH runner on {server.name} ({server.ssh_user}@{server.hostname}), {args.count} x `true`"
    )
    print(
        f"  reused connection: {reused * 1000:9.1f} ms total {reused * 1000 / args.count:7.2f} ms"
        f"/command  ({reused_connections} new connections)"
    )
    print(
        f"  fresh connection:  {fresh * 1000:9.1f} ms total {fresh * 1000 / args.count:7.2f} ms"
        "/command  (a new connection for each)"
    )
    verdict = "meets" if ratio <= GOAL else "MISSES"
    print(f"  ratio reused/fresh: {ratio:.3f} (1/{1 / ratio:.1f}); {verdict} the goal of <= 1/5")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
