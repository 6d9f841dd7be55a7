"""`python -m lab up|down|status|herd|web|worker [--profile scale]`: drive the lab fleet."""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profile",
        choices=["default", "scale"],
        help="which lab: default (4 servers, .lab) or scale (40 servers of small "
        "instances, .lab-scale, its own addresses and ports); default: the one recorded "
        "in LAB_DIR, else default",
    )
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the lab (idempotent)", parents=[common])
    up.add_argument(
        "--servers", type=int, help="number of servers (default: 4, or 40 for the scale profile)"
    )
    up.add_argument("--no-worker", action="store_true", help="do not (re)start the worker")
    up.add_argument(
        "--jobs", type=int, default=4, help="scale profile: herds built at once (default 4)"
    )
    sub.add_parser("down", help="stop everything the lab started", parents=[common])
    sub.add_parser(
        "demo", help="build the demo fleet and inventory, start the web admin", parents=[common]
    )
    sub.add_parser("status", help="what is running; exit 1 if something is not", parents=[common])
    web = sub.add_parser("web", help="(re)start the web admin on 127.0.0.1", parents=[common])
    web.add_argument("action", choices=["start"])
    worker = sub.add_parser("worker", help="(re)start the demo's Celery worker", parents=[common])
    worker.add_argument("action", choices=["restart"])
    herd_cmd = sub.add_parser("herd", help="build or drop a herd on the lab servers")
    herd_sub = herd_cmd.add_subparsers(dest="herd_command", required=True)
    create = herd_sub.add_parser("create", parents=[common])
    create.add_argument("name")
    create.add_argument("--primary", type=int, required=True, help="server number")
    create.add_argument("--replicas", default="", help="server numbers, comma-separated")
    create.add_argument("--port", type=int, default=5432)
    drop = herd_sub.add_parser("drop", parents=[common])
    drop.add_argument("name")
    args = parser.parse_args(argv)
    # The profile decides the lab folder, addresses and ports that lab.state computes when
    # it is imported: set it first.
    if args.profile:
        os.environ["LAB_PROFILE"] = args.profile
    # sshd, named, slapd, usermod live in sbin, which a non-login root shell may lack.
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"

    from .errors import LabError

    try:
        from . import fleet, herd

        if args.command == "up":
            if args.servers is not None and not 1 <= args.servers <= 250:
                raise LabError("--servers must be between 1 and 250")
            fleet.up(args.servers, worker=not args.no_worker, jobs=args.jobs)
        elif args.command == "down":
            fleet.down()
        elif args.command == "status":
            return 0 if fleet.status() else 1
        elif args.command == "demo":
            from . import demo

            demo.run()
        elif args.command == "web":
            fleet.start_web()
        elif args.command == "worker":
            fleet.restart_worker()
        elif args.command == "herd" and args.herd_command == "create":
            replicas = [int(n) for n in args.replicas.split(",") if n.strip()]
            print(json.dumps(herd.create(args.name, args.primary, replicas, args.port), indent=2))
        elif args.command == "herd" and args.herd_command == "drop":
            herd.drop(args.name)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
