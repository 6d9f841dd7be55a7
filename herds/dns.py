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
import socket
import time
from collections.abc import Iterable

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

from herds.dns_records import (
    RECORD_TYPES,
    REPLACED_TYPES,
    TSIG_ALGORITHMS,
    DNSError,
    DNSNameError,
    DNSResult,
    fqdn,
    host_fqdn,
    parse_ip,
    zone,
)

# --- talking to the server ------------------------------------------------------------------


def _server() -> tuple[str, int, str]:
    """(address, port, label) of the DNS server; dnspython needs an address, not a name."""
    host = str(settings.DNS_SERVER).strip()
    port = int(settings.DNS_PORT)
    label = f"{host}:{port}"
    if parse_ip(host) is not None:
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
            if found and not parse_ip(found[0]):
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
    ip = parse_ip(str(hostname))
    if ip is not None:
        if ip.version != 4:
            raise DNSError(
                f"cannot point {vhost} at {ip}: an IPv6 address; ElepHaaS writes A records only"
            )
        return str(ip)
    name = host_fqdn(hostname)
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
    ip = parse_ip(value)
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
        if parse_ip(str(server_hostname)) is not None:
            raise DNSError(
                f"cannot point {name} at {server_hostname} with a CNAME: a CNAME needs a host "
                f"name, and this server is recorded by its IP address; set "
                f"ELEPHAAS_DNS_RECORD_TYPE=A to write A records",
                name=name,
            )
        value = host_fqdn(server_hostname)
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


PREFLIGHT_NAME = "elephaas-preflight-check"


def check_update_key() -> float:
    """Prove the DNS server answers and lets the TSIG key update the zone, changing
    nothing: one signed update that deletes a TXT record nobody has (a no-op the server
    must still authorise). Returns its duration in seconds; raises DNSError saying why."""
    started = time.monotonic()
    name = fqdn(PREFLIGHT_NAME)
    keyring, keyname, algorithm = _keyring_for(name)
    update = dns.update.UpdateMessage(
        zone(), keyring=keyring, keyname=keyname, keyalgorithm=algorithm
    )
    update.delete(name, "TXT")
    response = _exchange(update, doing="cannot check the TSIG key with", name=name)
    rcode = response.rcode()
    if rcode != dns.rcode.NOERROR:
        _, _, label = _server()
        raise DNSError(
            f"DNS server {label} refused a signed update of the zone {zone()} "
            f"({dns.rcode.to_text(rcode)}): check that the TSIG key “{keyname}” may update it",
            server=label,
            name=name,
        )
    return time.monotonic() - started


def delete_name(name: str) -> DNSResult:
    """Remove a name's A, AAAA and CNAME records (tests clean up with it)."""
    full = fqdn(name)
    return _replace(full, "A", [], "delete")


__all__ = [
    "DNSError",
    "check_update_key",
    "DNSNameError",
    "DNSResult",
    "delete_name",
    "lookup",
    "point_vhost",
    "set_ro_vhost",
]
