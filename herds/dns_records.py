"""DNS records of herds: which names ElepHaaS writes and where they should point. Pure.

Names are checked here (letters, digits, inner hyphens, inside the one configured zone),
and `desired_records` reads the inventory objects it is given to say where a herd's vhost
and read-only vhost belong. Talking to the DNS server is herds.dns (the boundary).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings

from instances.choices import Role

RECORD_TYPES = ("A", "CNAME")
# Every type a client could be handed for a vhost: all go before the new record is added,
# in the same message, so a stale AAAA cannot outlive the move of the A.
REPLACED_TYPES = ("A", "AAAA", "CNAME")
TSIG_ALGORITHMS = (
    "hmac-sha256",
    "hmac-sha384",
    "hmac-sha512",
    "hmac-sha224",
    "hmac-sha1",
    "hmac-md5",
)
NAME_MAX = 253
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class DNSError(Exception):
    """A DNS update or query failed; the message is one line a DBA can act on."""

    def __init__(self, message: str, *, server: str = "", name: str = "") -> None:
        super().__init__(message)
        self.server = server
        self.name = name


class DNSNameError(DNSError, ValueError):
    """A name ElepHaaS refuses to put in DNS: invalid, or outside the configured zone."""


@dataclass(frozen=True)
class DNSResult:
    """What one update did: `name` now answers `values` (previously `previous`)."""

    name: str
    record_type: str
    values: tuple[str, ...]
    previous: tuple[str, ...] = ()
    seconds: float = 0.0
    ttl: int = 0
    server: str = field(default="", compare=False)

    @property
    def value(self) -> str:
        return ", ".join(self.values) if self.values else "(no record)"

    @property
    def changed(self) -> bool:
        return tuple(self.previous) != tuple(self.values)

    def describe(self) -> str:
        """`orders.lab.elephaas.test. → 127.0.1.1 (was 127.0.1.2)`, for job steps and summaries."""
        was = ", ".join(self.previous) if self.previous else "no record"
        if not self.changed:
            return f"{self.name} → {self.value} (unchanged)"
        if not self.values:
            return f"{self.name} deleted (was {was})"
        return f"{self.name} → {self.value} (was {was})"


# --- names (pure) -----------------------------------------------------------------------


def _describe_char(char: str) -> str:
    names = {" ": "a space", "\n": "a newline", "\r": "a carriage return", "\t": "a tab"}
    if char in names:
        return names[char]
    if not char.isprintable():
        return f"the control character U+{ord(char):04X}"
    return f"“{char}”"


def _shown(text: str, limit: int = 60) -> str:
    """User input as it may appear in a one-line message: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])


def _check_labels(name: str, what: str) -> None:
    """`name` without its trailing dot: letters, digits and inner hyphens, ≤ 63 per label."""
    shown = _shown(name)
    if not name:
        raise DNSNameError(f"{what} is empty")
    if len(name) > NAME_MAX:
        raise DNSNameError(f"{what} “{shown}…” is {len(name)} characters long; the limit is 253")
    for char in name:
        if char != "." and char not in _LABEL_CHARS:
            raise DNSNameError(
                f"{what} “{shown}” contains {_describe_char(char)}: a DNS name may contain "
                f"only letters, digits, “-” and dots"
            )
    for label in name.split("."):
        if not label:
            raise DNSNameError(f"{what} “{shown}” has an empty label (two dots in a row?)")
        if not _LABEL_RE.match(label):
            raise DNSNameError(
                f"{what} “{shown}”: the label “{_shown(label, 63)}” must be 1–63 characters and "
                f"must not start or end with “-”"
            )


def zone() -> str:
    """settings.DNS_ZONE, lower-case, absolute (with its trailing dot)."""
    text = str(settings.DNS_ZONE or "").strip().lower().rstrip(".")
    _check_labels(text, "The DNS zone (ELEPHAAS_DNS_ZONE)")
    return text + "."


def fqdn(name: str) -> str:
    """A vhost as an absolute name in the zone: `orders` → `orders.lab.elephaas.test.`.

    A single label is relative to the zone; a longer name must be written in full (with
    or without its trailing dot) and lie inside the zone: `orders.example.com` is refused
    rather than quietly turned into `orders.example.com.lab.elephaas.test.`, which is
    never what the DBA meant. The zone's apex is refused too (it holds SOA and NS).
    """
    if not isinstance(name, str):
        raise DNSNameError(f"a DNS name must be text, not {type(name).__name__}")
    the_zone = zone()
    # DNS names are case-insensitive: keep one spelling, so comparisons hold.
    text = name.lower()
    absolute = text.endswith(".")
    text = text[:-1] if absolute else text
    _check_labels(text, "The DNS name")
    bare_zone = the_zone[:-1]
    if text == bare_zone:
        raise DNSNameError(f"“{name}” is the zone {the_zone} itself; a vhost is a name inside it")
    if text.endswith("." + bare_zone):
        full = text + "."
    elif "." not in text and not absolute:
        full = f"{text}.{the_zone}"
    else:
        raise DNSNameError(
            f"“{name}” is not in the zone {the_zone}, the only zone ElepHaaS updates: "
            f"write the vhost as one label (“{text.split('.')[0]}”) or in full "
            f"(“{text.split('.')[0]}.{bare_zone}”)"
        )
    _check_labels(full[:-1], "The DNS name")
    return full


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_fqdn(hostname: str) -> str:
    """A server's host name as an absolute DNS name (the inventory stores it without a dot)."""
    text = str(hostname).lower()
    text = text[:-1] if text.endswith(".") else text
    _check_labels(text, "The server host name")
    return text + "."


# --- what a herd should point at (pure) -----------------------------------------------------


def desired_records(herd, instances: Iterable | None = None) -> dict:
    """What the herd's vhost and read-only vhost should point at, from the inventory.

    Pure: reads `herd.vhost`, `herd.ro_vhost`, `herd.name` and each instance's `role`,
    `online`, `fenced`, `needs_rebuild` and `server.hostname` (plain objects do). Without
    `instances`, the herd's own (`herd.instances.all()`, prefetched by the caller).

    Returns {"vhost", "primary", "primary_instance", "ro_vhost", "replicas",
    "refusal", "reason"}: `primary` is the server host name the vhost should point at
    (None with a `refusal` sentence saying why not), `replicas` the host names of the
    online replicas for the read-only vhost, `reason` one sentence saying what and why.

    The vhost follows the one primary that is recorded online and not fenced. Fenced
    primaries are left out (fencing an old primary is how a DBA settles a split brain);
    two online unfenced primaries are a split brain, and no name is moved until one is
    fenced. A primary not known to be online is refused too: pointing applications at
    a server nobody has seen answer only moves the outage.
    """
    if instances is None:
        instances = herd.instances.all()
    instances = list(instances)
    name = getattr(herd, "name", str(herd))
    primaries = [i for i in instances if i.role == Role.PRIMARY]
    unfenced = [i for i in primaries if not i.fenced]
    online = [i for i in unfenced if i.online is True]
    replicas = sorted(
        (
            i
            for i in instances
            if i.role == Role.REPLICA and i.online is True and not i.fenced and not i.needs_rebuild
        ),
        key=lambda i: (i.server.hostname, i.port or 0),
    )
    replica_hosts: list[str] = []
    for replica in replicas:
        if replica.server.hostname not in replica_hosts:
            replica_hosts.append(replica.server.hostname)

    refusal = ""
    primary = None
    if not primaries:
        refusal = f"{name} has no recorded primary: run discovery or a health check first"
    elif not unfenced:
        fenced = ", ".join(_address(i) for i in primaries)
        refusal = (
            f"the only recorded primary of {name} ({fenced}) is fenced: a vhost is never pointed "
            f"at a fenced instance; promote a replica or clear the flag if you are sure"
        )
    elif len(online) > 1:
        refusal = (
            f"{name} is in split brain: {len(online)} online primaries "
            f"({', '.join(_address(i) for i in online)}); fence the one clients must not "
            f"write to, then refresh DNS"
        )
    elif not online:
        state = "offline" if unfenced[0].online is False else "not checked yet"
        refusal = (
            f"the primary of {name} ({_address(unfenced[0])}) is {state}: check it (or fail over) "
            f"before pointing DNS at it"
        )
    else:
        primary = online[0]

    parts = []
    if herd.vhost:
        if primary is not None:
            parts.append(
                f"vhost → {primary.server.hostname} (the online primary {_address(primary)})"
            )
        else:
            parts.append(f"vhost: refused ({refusal})")
    if herd.ro_vhost:
        if replica_hosts:
            parts.append(
                f"read-only vhost → {', '.join(replica_hosts)} "
                f"({len(replicas)} online replica{'s' if len(replicas) != 1 else ''})"
            )
        else:
            parts.append("read-only vhost → no record (no online replica)")
    reason = f"{name}: " + ("; ".join(parts) if parts else "no vhost nor read-only vhost set")
    return {
        "vhost": herd.vhost,
        "primary": primary.server.hostname if primary is not None else None,
        "primary_instance": primary,
        "ro_vhost": herd.ro_vhost,
        "replicas": replica_hosts,
        "refusal": refusal,
        "reason": reason,
    }


def _address(instance) -> str:
    """host:port of an Instance or of any plain object with server.hostname and port."""
    return f"{instance.server.hostname}:{instance.port}"
