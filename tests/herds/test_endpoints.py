"""A herd's connection strings (herds.endpoints): pure."""

from __future__ import annotations

from herds.endpoints import endpoints


def by_what(result):
    return {e.what: e.value for e in result}


def test_every_member_primary_first_for_writes_replicas_first_for_reads():
    result = by_what(
        endpoints(
            vhost="orders.lab.example.",
            ro_vhost="orders-ro.lab.example.",
            port=5432,
            primary=[("127.0.1.1", 5432)],
            replicas=[("127.0.1.2", 5432), ("db4.example", 5433)],
        )
    )
    assert result["read-write DNS name"] == "orders.lab.example:5432"
    assert result["read-only DNS name"] == "orders-ro.lab.example:5432"
    assert result["libpq, read-write"] == (
        "postgresql://127.0.1.1:5432,127.0.1.2:5432,db4.example:5433/DBNAME"
        "?target_session_attrs=read-write"
    )
    assert result["libpq, read-only"] == (
        "postgresql://127.0.1.2:5432,db4.example:5433,127.0.1.1:5432/DBNAME"
        "?target_session_attrs=prefer-standby"
    )
    assert result["JDBC, read-write"].startswith("jdbc:postgresql://127.0.1.1:5432,")
    assert result["JDBC, read-only"].endswith(
        "targetServerType=preferSecondary&loadBalanceHosts=true"
    )


def test_ipv6_hosts_are_bracketed_and_duplicates_dropped_and_names_quoted():
    result = by_what(
        endpoints(
            vhost="",
            ro_vhost="",
            port=5432,
            primary=[("2001:db8::1", 5432)],
            replicas=[("2001:db8::1", 5432), ("h2", 5432)],
            dbname="my db/x?",
        )
    )
    assert "read-write DNS name" not in result and "read-only DNS name" not in result
    assert result["libpq, read-write"] == (
        "postgresql://[2001:db8::1]:5432,h2:5432/my%20db%2Fx%3F?target_session_attrs=read-write"
    )


def test_a_herd_without_members_has_only_its_names():
    result = endpoints(vhost="a.z.", ro_vhost="", port=1, primary=[], replicas=[])
    assert [e.what for e in result] == ["read-write DNS name"]
