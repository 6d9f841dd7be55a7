"""The lab is a real fleet: these tests talk to its real sshd, PostgreSQL, BIND, slapd,
Redis and Celery worker, and would fail against any mock of them."""

from __future__ import annotations

import dataclasses
import secrets
import time

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import ldap
import psycopg2
import pytest

from instances import ssh
from lab import fleet, herd

pytestmark = pytest.mark.lab

ZONE = fleet.ZONE


def _connect(address: str, port: int, lab):
    return psycopg2.connect(
        host=address,
        port=port,
        dbname="postgres",
        user="elephaas",
        password=lab.secret("pg_password"),
        connect_timeout=5,
    )


@pytest.fixture(scope="module")
def streaming_herd(lab_servers):
    """A primary on srv1 and a streaming replica on srv2, on a port of its own."""
    info = herd.create("labcheck", primary=1, replicas=[2], port=5499)
    yield info
    herd.drop("labcheck")


def test_it_answers_ssh_with_each_servers_own_pinned_host_key(lab_servers):
    fingerprints = set()
    for server in lab_servers:
        result = ssh.run(server, ["id", "-un"])
        assert result.stdout.strip() == "postgres"
        fingerprints.add(server.host_key_fingerprint)
    assert len(fingerprints) == len(lab_servers)


def test_it_refuses_a_wrong_pinned_host_key(lab_servers):
    first, second = lab_servers[0], lab_servers[1]
    impostor = dataclasses.replace(first, host_key=second.host_key)
    with pytest.raises(ssh.SSHError) as caught:
        ssh.run(impostor, ["touch", "/var/lib/postgresql/should-not-exist"])
    assert caught.value.stage == "hostkey"
    listing = ssh.run(first, ["ls", "-a", "/var/lib/postgresql"]).stdout.split()
    assert "should-not-exist" not in listing


def test_it_gives_each_server_its_own_var_lib_postgresql(lab_servers):
    first, second = lab_servers[0], lab_servers[1]
    marker = f"marker-{secrets.token_hex(4)}"
    ssh.run(first, ["touch", f"/var/lib/postgresql/{marker}"])
    try:
        assert marker in ssh.run(first, ["ls", "-a", "/var/lib/postgresql"]).stdout.split()
        assert marker not in ssh.run(second, ["ls", "-a", "/var/lib/postgresql"]).stdout.split()
    finally:
        ssh.run(first, ["rm", "-f", f"/var/lib/postgresql/{marker}"])


def test_it_streams_from_a_primary_to_a_replica_on_another_server(lab, streaming_herd):
    primary = streaming_herd["primary"]["address"]
    replica = streaming_herd["replicas"][0]["address"]
    value = secrets.token_hex(8)
    conn = _connect(primary, 5499, lab)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT application_name, state FROM pg_stat_replication")
        assert cur.fetchall() == [("labcheck_srv2", "streaming")]
        cur.execute("CREATE TABLE IF NOT EXISTS lab_probe (v text)")
        cur.execute("INSERT INTO lab_probe VALUES (%s)", [value])
        cur.execute("SELECT pg_current_wal_lsn()")
        written = cur.fetchone()[0]
    conn.close()
    conn = _connect(replica, 5499, lab)
    conn.autocommit = True
    deadline = time.monotonic() + 10
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone() == (True,)
        # Wait until the replica has replayed past the insert, then read it there.
        while time.monotonic() < deadline:
            cur.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [written])
            if cur.fetchone()[0]:
                break
            time.sleep(0.05)
        cur.execute("SELECT count(*) FROM lab_probe WHERE v = %s", [value])
        seen = cur.fetchone()[0]
    conn.close()
    assert seen == 1


def test_it_rsyncs_over_ssh_from_one_server_to_another(lab_servers):
    first, second = lab_servers[0], lab_servers[1]
    name = f"rsync-{secrets.token_hex(4)}"
    payload = secrets.token_hex(32)
    ssh.run(
        first, ["sh", "-c", 'printf %s "$1" > "$2"', "sh", payload, f"/var/lib/postgresql/{name}"]
    )
    try:
        ssh.run(
            first,
            [
                "rsync",
                "-a",
                f"/var/lib/postgresql/{name}",
                f"{second.hostname}:/var/lib/postgresql/{name}",
            ],
        )
        assert ssh.run(second, ["cat", f"/var/lib/postgresql/{name}"]).stdout == payload
    finally:
        ssh.run(first, ["rm", "-f", f"/var/lib/postgresql/{name}"])
        ssh.run(second, ["rm", "-f", f"/var/lib/postgresql/{name}"])


def _query(name: str, rdtype: str = "A"):
    request = dns.message.make_query(f"{name}.{ZONE}.", rdtype)
    return dns.query.udp(request, "127.0.0.1", port=fleet.DNS_PORT, timeout=5)


def _nsupdate(lines: list[str], keyfile=None) -> int:
    from lab import proc

    argv = ["nsupdate"] + (["-k", str(keyfile)] if keyfile else [])
    script = [f"server 127.0.0.1 {fleet.DNS_PORT}", f"zone {ZONE}", *lines, "send", ""]
    return proc.run(argv, input="\n".join(script), check=False).returncode


def test_it_resolves_a_server_name_in_the_lab_zone(lab_servers):
    answer = _query("srv2")
    assert answer.rcode() == dns.rcode.NOERROR
    assert [r.address for r in answer.answer[0]] == ["127.0.1.2"]


def test_it_applies_a_tsig_signed_update_and_refuses_an_unsigned_one(lab):
    name = f"probe-{secrets.token_hex(3)}"
    keyfile = lab.SECRETS_DIR / "tsig.key"
    assert _nsupdate([f"update add {name}.{ZONE} 30 A 127.0.1.77"]) != 0
    assert _query(name).rcode() == dns.rcode.NXDOMAIN
    assert _nsupdate([f"update add {name}.{ZONE} 30 A 127.0.1.77"], keyfile) == 0
    try:
        assert [r.address for r in _query(name).answer[0]] == ["127.0.1.77"]
    finally:
        _nsupdate([f"update delete {name}.{ZONE} A"], keyfile)


def test_it_authenticates_an_ldap_user_and_refuses_a_wrong_password(lab):
    users = fleet.ldap_users()
    alice = users["alice"]
    conn = ldap.initialize(f"ldap://127.0.0.1:{fleet.LDAP_PORT}")
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 5)
    conn.simple_bind_s(alice["dn"], alice["password"])
    assert conn.whoami_s() == f"dn:{alice['dn']}"
    groups = conn.search_s(
        f"ou=groups,{fleet.LDAP_BASE}", ldap.SCOPE_SUBTREE, f"(member={alice['dn']})", ["cn"]
    )
    assert [entry[1]["cn"][0].decode() for entry in groups] == ["elephaas-dba"]
    conn.unbind_s()
    wrong = ldap.initialize(f"ldap://127.0.0.1:{fleet.LDAP_PORT}")
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        wrong.simple_bind_s(alice["dn"], alice["password"] + "x")


def test_it_runs_a_task_on_the_real_worker_through_redis(celery_worker):
    import os

    from elephaas.celery import ping

    payload = secrets.token_hex(6)
    reply = ping.delay(payload).get(timeout=10)
    assert reply["payload"] == payload
    assert reply["worker_pid"] == celery_worker["process"].pid
    assert reply["worker_pid"] != os.getpid()
