"""Discovery's pure parsing: pg_lsclusters output, ps output, libpq conninfo."""

from __future__ import annotations

import json

import pytest

from instances import discovery

LSCLUSTERS = [
    {
        "running": 1,
        "cluster": "orders",
        "recovery": 1,
        "pgdata": "/var/lib/postgresql/15/orders",
        "port": "5432",
        "version": 15,
        "config": {"primary_conninfo": "host=127.0.1.1 port=5432 user=replicator"},
    },
    {
        "running": 0,
        "cluster": "billing",
        "recovery": 0,
        "pgdata": "/srv/pg/billing",
        "port": "5433",
        "version": "15",
        "config": {},
    },
]


def test_it_reads_pg_lsclusters_json():
    found = discovery.parse_lsclusters_json(json.dumps(LSCLUSTERS))
    assert found[0] == discovery.FoundCluster(
        15,
        "orders",
        5432,
        "/var/lib/postgresql/15/orders",
        True,
        True,
        "host=127.0.1.1 port=5432 user=replicator",
    )
    assert found[0].upstream == ("127.0.1.1", 5432)
    assert (found[1].running, found[1].in_recovery, found[1].upstream) == (False, False, None)


def test_it_ignores_the_primary_conninfo_a_promoted_primary_kept():
    promoted = {**LSCLUSTERS[0], "recovery": 0}
    [found] = discovery.parse_lsclusters_json(json.dumps([promoted]))
    assert found.primary_conninfo and found.upstream is None
    unknown = discovery.FoundCluster(15, "x", 5432, "/d", True, None, "host=db1 port=5433")
    assert unknown.upstream == ("db1", 5433)  # the listing could not tell: as configured


@pytest.mark.parametrize("text", ["{", '{"a": 1}', '[{"cluster": "x"}]'])
def test_it_rejects_unexpected_json(text):
    with pytest.raises(discovery.DiscoveryParseError):
        discovery.parse_lsclusters_json(text)


def test_it_reads_pg_lsclusters_text():
    text = (
        "15  main 5432 online,recovery postgres /var/lib/postgresql/15/main "
        "/var/log/postgresql/postgresql-15-main.log\n"
        "13  old  5433 down   postgres /var/lib/postgresql/13/old /var/log/x.log\n"
    )
    main, old = discovery.parse_lsclusters_text(text)
    assert (main.name, main.port, main.running, main.in_recovery) == ("main", 5432, True, True)
    assert (old.version, old.running, old.in_recovery) == (13, False, False)


def test_it_finds_postmasters_not_their_children():
    ps = "1 0 init\n100 1 postgres\n101 100 postgres\n102 100 postgres\n200 1 bash\n"
    ps += "300 200 postgres\n301 300 postgres\n"
    assert discovery.find_postmasters(ps) == [100, 300]


def test_it_reads_the_postmaster_report_and_skips_garbage():
    report = "100\t/data/pg\t16\t5440\nnot a line\n300\t/x\tbad\t5432\n"
    assert discovery.parse_postmaster_report(report) == [
        discovery.Postmaster(100, "/data/pg", 5440, 16)
    ]


@pytest.mark.parametrize(
    ("conninfo", "expected"),
    [
        ("host=db1 port=5433 user=rep", {"host": "db1", "port": "5433", "user": "rep"}),
        ("host = 'db 1' port=5432", {"host": "db 1", "port": "5432"}),
        (r"application_name='it\'s' host=x", {"application_name": "it's", "host": "x"}),
        ("postgresql://rep@db2:6543/postgres", {"host": "db2", "port": "6543"}),
        ("", {}),
    ],
)
def test_it_parses_conninfo(conninfo, expected):
    assert discovery.parse_conninfo(conninfo) == expected


def test_it_defaults_the_upstream_port_and_takes_the_first_host():
    found = discovery.FoundCluster(15, "a", 5432, "/d", True, True, "host=h1,h2 user=r")
    assert found.upstream == ("h1", 5432)
