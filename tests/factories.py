"""Builders for test data: plain functions with sensible, unique defaults.

Each returns a saved object; pass any model field as a keyword to override a default.
Names and addresses come from one counter, so objects built in one test never collide.
"""

from __future__ import annotations

import itertools
from typing import Any

from herds.models import DRCandidate, Environment, Herd
from instances.models import Instance, Role, Server

_sequence = itertools.count(1)


def _next() -> int:
    return next(_sequence)


def make_environment(name: str | None = None, **fields: Any) -> Environment:
    return Environment.objects.create(name=name or f"env-{_next()}", **fields)


def make_server(
    hostname: str | None = None, environment: Environment | None = None, **fields: Any
) -> Server:
    number = _next()
    return Server.objects.create(
        hostname=hostname or f"db{number}.example.test",
        environment=environment or make_environment(),
        **fields,
    )


def make_herd(
    name: str | None = None, environment: Environment | None = None, **fields: Any
) -> Herd:
    fields.setdefault("pg_version", 15)
    return Herd.objects.create(
        name=name or f"herd{_next()}", environment=environment or make_environment(), **fields
    )


def make_instance(
    herd: Herd | None = None,
    server: Server | None = None,
    role: Role = Role.REPLICA,
    **fields: Any,
) -> Instance:
    """An instance; a replica streams from `upstream` only if one is passed."""
    herd = herd or make_herd()
    server = server or make_server(environment=herd.environment)
    return Instance.objects.create(herd=herd, server=server, role=role, **fields)


def make_dr_candidate(instance: Instance, **fields: Any) -> DRCandidate:
    return DRCandidate.objects.create(herd=instance.herd, instance=instance, **fields)
