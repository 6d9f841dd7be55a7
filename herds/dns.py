"""The DNS boundary: RFC 2136 updates signed with TSIG, and direct queries to check them.

This is the only module that imports dnspython's update, query and TSIG keyring modules
(DESIGN.md, "Boundaries"). Everything else asks it to point a vhost somewhere, to list a
herd's replicas under its read-only vhost, or to say what the DNS server answers now.

Every update is one message (delete the name's A, AAAA and CNAME records, add the new
ones), so a client never sees the name half-changed; it is sent over TCP to the server
that holds the zone, signed with the configured TSIG key, and then read back from that
same server: an update the server accepted but does not answer with is a failure too.
Errors are `DNSError`s whose message is one line naming the server, the name and what
failed, ready to be a job's error.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
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


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _host_name(hostname: str) -> str:
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
        fenced = ", ".join(_where(i) for i in primaries)
        refusal = (
            f"the only recorded primary of {name} ({fenced}) is fenced: a vhost is never pointed "
            f"at a fenced instance; promote a replica or clear the flag if you are sure"
        )
    elif len(online) > 1:
        refusal = (
            f"{name} is in split brain: {len(online)} online primaries "
            f"({', '.join(_where(i) for i in online)}); fence the one clients must not "
            f"write to, then refresh DNS"
        )
    elif not online:
        state = "offline" if unfenced[0].online is False else "not checked yet"
        refusal = (
            f"the primary of {name} ({_where(unfenced[0])}) is {state}: check it (or fail over) "
            f"before pointing DNS at it"
        )
    else:
        primary = online[0]

    parts = []
    if herd.vhost:
        if primary is not None:
            parts.append(
                f"vhost → {primary.server.hostname} (the online primary {_where(primary)})"
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


def _where(instance) -> str:
    return f"{instance.server.hostname}:{instance.port}"


# --- talking to the server ------------------------------------------------------------------


def _server() -> tuple[str, int, str]:
    """(address, port, label) of the DNS server; dnspython needs an address, not a name."""
    host = str(settings.DNS_SERVER).strip()
    port = int(settings.DNS_PORT)
    label = f"{host}:{port}"
    if _ip(host) is not None:
        return host, port, label
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DNSError(
            f"cannot resolve the DNS server {label} (ELEPHAAS_DNS_SERVER): {exc}", server=label
        ) from None
    return infos[0][4][0], port, label


def _timeout() -> float:
    return float(settings.DNS_TIMEOUT)


def _keyring() -> tuple[dict, str, str]:
    """(keyring, key name, algorithm); never puts the secret in a message."""
    secret = str(settings.DNS_TSIG_SECRET or "").strip()
    keyname = str(settings.DNS_TSIG_NAME or "").strip()
    algorithm = str(settings.DNS_TSIG_ALGORITHM or "").strip().lower().rstrip(".")
    if not secret:
        raise DNSError(
            "no TSIG secret configured (set ELEPHAAS_DNS_TSIG_SECRET or _FILE): "
            "ElepHaaS never sends unsigned DNS updates"
        )
    if not keyname:
        raise DNSError("no TSIG key name configured (set ELEPHAAS_DNS_TSIG_NAME)")
    if algorithm not in TSIG_ALGORITHMS:
        raise DNSError(
            f"TSIG algorithm “{algorithm[:40]}” (ELEPHAAS_DNS_TSIG_ALGORITHM) is not supported: "
            f"use one of {', '.join(TSIG_ALGORITHMS)}"
        )
    try:
        base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise DNSError(
            "the TSIG secret (ELEPHAAS_DNS_TSIG_SECRET) is not valid base64: copy the "
            'secret "…" value of the key from the DNS server\'s configuration'
        ) from None
    try:
        keyring = dns.tsigkeyring.from_text({keyname: (algorithm, secret)})
    except dns.exception.DNSException as exc:
        raise DNSError(f"TSIG key name “{keyname[:60]}” is invalid: {exc}") from None
    return keyring, keyname, algorithm


def _exchange(message: dns.message.Message, *, doing: str, name: str) -> dns.message.Message:
    """Send over TCP, bounded by DNS_TIMEOUT; turn every failure into one DNSError line."""
    address, port, label = _server()
    timeout = _timeout()
    keyname = str(settings.DNS_TSIG_NAME)
    tsig_hint = (
        f"check that the TSIG key “{keyname}” (ELEPHAAS_DNS_TSIG_NAME, _ALGORITHM, _SECRET) "
        f"matches the server's and that the zone allows it to update"
    )
    try:
        return dns.query.tcp(message, address, timeout=timeout, port=port)
    except dns.exception.Timeout:
        reason = f"no answer within {timeout:g} s"
    except dns.tsig.PeerBadKey:
        reason = f"refused: NOTAUTH, the server does not know the TSIG key; {tsig_hint}"
    except dns.tsig.PeerBadSignature:
        reason = f"refused: NOTAUTH, bad TSIG signature (wrong secret?); {tsig_hint}"
    except dns.tsig.PeerBadTime:
        reason = "refused: NOTAUTH, TSIG time out of range; check both clocks (NTP)"
    except dns.tsig.PeerError as exc:
        reason = f"refused: NOTAUTH, TSIG error {exc}; {tsig_hint}"
    except (dns.tsig.BadSignature, dns.message.UnknownTSIGKey, dns.tsig.BadTime) as exc:
        reason = f"its answer failed TSIG validation ({type(exc).__name__}); {tsig_hint}"
    except ConnectionRefusedError:
        reason = "connection refused: is the DNS server running on that address and port?"
    except OSError as exc:
        reason = f"cannot connect: {exc.strerror or exc}"
    except dns.exception.DNSException as exc:
        reason = f"bad answer: {type(exc).__name__}: {exc}"
    raise DNSError(f"DNS server {label}: {doing} {name}: {reason}", server=label, name=name)


def _query(name: str, rdtype: str = "A") -> dns.message.Message:
    request = dns.message.make_query(name, rdtype)
    # The server holds the zone: ask it, not a caching resolver that may answer the old
    # record for a TTL.
    response = _exchange(request, doing="cannot query", name=name)
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        _, _, label = _server()
        raise DNSError(
            f"DNS server {label}: query for {name} answered {dns.rcode.to_text(rcode)}",
            server=label,
            name=name,
        )
    return response


def _answers(response: dns.message.Message, name: str) -> list[str]:
    """The CNAME target of `name`, or its A addresses (sorted), from one response."""
    owner = dns.name.from_text(name)
    for rrset in response.answer:
        if rrset.name == owner and rrset.rdtype == dns.rdatatype.CNAME:
            return [rdata.target.to_text().lower() for rdata in rrset]
    addresses = [
        rdata.address
        for rrset in response.answer
        if rrset.name == owner and rrset.rdtype == dns.rdatatype.A
        for rdata in rrset
    ]
    return sorted(set(addresses), key=ipaddress.ip_address)


def lookup(name: str) -> list[str]:
    """What the DNS server answers for `name` now: [CNAME target] or its A addresses; [] none."""
    full = fqdn(name)
    return _answers(_query(full), full)


def _addresses_of(name: str) -> list[str]:
    """IPv4 addresses of a host name: from the DNS server if the name is in its zone (it
    may be the only one to know lab names), else from the system resolver."""
    the_zone = zone()
    if name == the_zone or name.endswith("." + the_zone):
        response = _query(name)
        target = name
        # Follow a CNAME chain inside the answer (the server adds in-zone targets).
        for _ in range(8):
            found = _answers(response, target)
            if found and not _ip(found[0]):
                target = found[0]
                continue
            return found
        return []
    try:
        infos = socket.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({info[4][0] for info in infos}, key=ipaddress.ip_address)


def _ipv4_of(hostname: str, vhost: str) -> str:
    ip = _ip(str(hostname))
    if ip is not None:
        if ip.version != 4:
            raise DNSError(
                f"cannot point {vhost} at {ip}: an IPv6 address; ElepHaaS writes A records only"
            )
        return str(ip)
    name = _host_name(hostname)
    addresses = _addresses_of(name)
    if not addresses:
        raise DNSError(
            f"cannot point {vhost} at {hostname}: the name has no IPv4 address "
            f"(record the server by its address, or add its A record)",
            name=vhost,
        )
    if len(addresses) > 1:
        raise DNSError(
            f"cannot point {vhost} at {hostname}: it has several IPv4 addresses "
            f"({', '.join(addresses)}); record the server by the address clients should use",
            name=vhost,
        )
    return addresses[0]


def _replace(name: str, record_type: str, values: list[str], what: str) -> DNSResult:
    """Delete `name`'s A/AAAA/CNAME and add `values`, in one signed update; check it."""
    started = time.monotonic()
    keyring, keyname, algorithm = _keyring_for(name)
    previous = lookup(name)
    ttl = int(settings.DNS_TTL)
    update = dns.update.UpdateMessage(
        zone(), keyring=keyring, keyname=keyname, keyalgorithm=algorithm
    )
    for rdtype in REPLACED_TYPES:
        update.delete(name, rdtype)
    for value in values:
        update.add(name, ttl, record_type, value)
    response = _exchange(update, doing=f"cannot {what}", name=name)
    rcode = response.rcode()
    _, _, label = _server()
    if rcode != dns.rcode.NOERROR:
        text = dns.rcode.to_text(rcode)
        hints = {
            dns.rcode.REFUSED: f"the server does not let the TSIG key “{keyname}” update "
            f"this zone (check allow-update / update-policy and the key)",
            dns.rcode.NOTAUTH: f"the server is not authoritative for {zone()} or did not "
            f"accept the TSIG key “{keyname}”",
            dns.rcode.NOTZONE: f"the name is not in the zone {zone()} on this server",
            dns.rcode.SERVFAIL: "see the DNS server's log",
        }
        hint = hints.get(rcode, "see the DNS server's log")
        raise DNSError(
            f"DNS server {label} refused to {what} {name} ({text}): {hint}",
            server=label,
            name=name,
        )
    now = lookup(name)
    if now != sorted(values, key=_sort_key):
        shown = ", ".join(now) if now else "no record"
        wanted = ", ".join(values) if values else "no record"
        raise DNSError(
            f"DNS server {label}: update of {name} accepted but the server answers {shown} "
            f"instead of {wanted}; another writer, or a record type ElepHaaS does not replace?",
            server=label,
            name=name,
        )
    return DNSResult(
        name=name,
        record_type=record_type,
        values=tuple(now),
        previous=tuple(previous),
        seconds=time.monotonic() - started,
        ttl=ttl,
        server=label,
    )


def _keyring_for(name: str) -> tuple[dict, str, str]:
    try:
        return _keyring()
    except DNSError as exc:
        _, _, label = _server()
        raise DNSError(
            f"DNS server {label}: cannot update {name}: {exc}", server=label, name=name
        ) from None


def _sort_key(value: str):
    ip = _ip(value)
    return (0, ip) if ip is not None else (1, value)


def point_vhost(vhost: str, server_hostname: str, record_type: str | None = None) -> DNSResult:
    """Point `vhost` at one server: an A record (its IPv4 address) or a CNAME (its name).

    1. make the vhost absolute in the zone, and the record from the server's host name
       (A: its address, resolving a name; CNAME: its name, refusing an address);
    2. read what the server answers now (kept as `previous`);
    3. one signed update over TCP: delete the name's A, AAAA and CNAME, add the record;
    4. read it back from the server: it must answer exactly the new record.
    """
    name = fqdn(vhost)
    rtype = str(record_type or settings.DNS_RECORD_TYPE).strip().upper()
    if rtype not in RECORD_TYPES:
        raise DNSError(
            f"cannot point {name}: record type “{rtype[:20]}” (ELEPHAAS_DNS_RECORD_TYPE) "
            f"is not supported; use CNAME or A",
            name=name,
        )
    if rtype == "A":
        value = _ipv4_of(server_hostname, name)
    else:
        if _ip(str(server_hostname)) is not None:
            raise DNSError(
                f"cannot point {name} at {server_hostname} with a CNAME: a CNAME needs a host "
                f"name, and this server is recorded by its IP address; set "
                f"ELEPHAAS_DNS_RECORD_TYPE=A to write A records",
                name=name,
            )
        value = _host_name(server_hostname)
    return _replace(name, rtype, [value], "update")


def set_ro_vhost(ro_vhost: str, server_hostnames: Iterable[str]) -> DNSResult:
    """List every replica under the read-only vhost: one A record per address.

    One signed update deletes the name's A, AAAA and CNAME and adds an A per replica;
    with no replica the name is deleted. Then the server's answer is checked.
    """
    name = fqdn(ro_vhost)
    addresses: list[str] = []
    for hostname in server_hostnames:
        address = _ipv4_of(hostname, name)
        if address not in addresses:
            addresses.append(address)
    addresses.sort(key=ipaddress.ip_address)
    return _replace(name, "A", addresses, "update" if addresses else "delete")


def delete_name(name: str) -> DNSResult:
    """Remove a name's A, AAAA and CNAME records (tests clean up with it)."""
    full = fqdn(name)
    return _replace(full, "A", [], "delete")


__all__ = [
    "DNSError",
    "DNSNameError",
    "DNSResult",
    "delete_name",
    "desired_records",
    "fqdn",
    "lookup",
    "point_vhost",
    "set_ro_vhost",
    "zone",
]
