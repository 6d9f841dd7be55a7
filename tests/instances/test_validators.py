"""The inventory's field validators: pure, no database, fed hostile input."""

from __future__ import annotations

import base64
import shlex

import pytest
from django.core.exceptions import ValidationError
from hypothesis import assume, example, given
from hypothesis import strategies as st

from instances.validators import (
    join_path,
    normalise_hostname,
    normalise_path,
    sha256_fingerprint,
    validate_absolute_path,
    validate_dns_name,
    validate_host_key,
    validate_host_key_fingerprint,
    validate_host_key_type,
    validate_hostname,
    validate_identifier,
    validate_lsn,
    validate_pg_version,
    validate_port,
    validate_slug_name,
    validate_unix_user,
)

HOSTILE = [
    "a;b",
    "a b",
    "a'b",
    'a"b',
    "a$(id)",
    "$(reboot)",
    "a`id`",
    "a\nb",
    "a\rb",
    "a\tb",
    "a|b",
    "a&b",
    "a<b",
    "a>b",
    "a(b",
    "a)b",
    "a{b}",
    "a*",
    "a?",
    "a!b",
    "~a",
    "a\\b",
    "a\x00b",
    "a\u200bb",  # zero-width space: looks harmless on screen
    "ä",
]
SHELL_META = ";$`'\" \n\t\r|&<>(){}*?!~\\"


def messages(validator, value) -> str:
    with pytest.raises(ValidationError) as info:
        validator(value)
    return " ".join(info.value.messages)


class TestPort:
    @pytest.mark.parametrize("port", [1, 22, 5432, 65535])
    def test_it_accepts_ports_in_range(self, port):
        validate_port(port)

    @pytest.mark.parametrize("port", [0, -1, 65536, 100000])
    def test_it_rejects_ports_out_of_range(self, port):
        assert "1–65535" in messages(validate_port, port)

    @pytest.mark.parametrize("port", [True, "5432", 5432.0, None])
    def test_it_rejects_non_integers(self, port):
        messages(validate_port, port)


class TestPgVersion:
    @pytest.mark.parametrize("version", [10, 15, 17, 99])
    def test_it_accepts_major_versions(self, version):
        validate_pg_version(version)

    @pytest.mark.parametrize("version", [9, 0, 100, 150])
    def test_it_rejects_other_numbers_with_the_range(self, version):
        assert "10–99" in messages(validate_pg_version, version)


class TestIdentifier:
    @pytest.mark.parametrize("name", ["main", "billing", "a", "Orders_2", "pay-db", "x" * 63])
    def test_it_accepts_cluster_names(self, name):
        validate_identifier(name)

    @pytest.mark.parametrize("name", HOSTILE)
    def test_it_rejects_hostile_names(self, name):
        messages(validate_identifier, "x" + name)

    def test_it_names_the_offending_character(self):
        assert "a space" in messages(validate_identifier, "my db")
        assert "a newline" in messages(validate_identifier, "db\n")
        assert "“;”" in messages(validate_identifier, "db;rm")

    @pytest.mark.parametrize("name", ["1db", "_db", "-db", ""])
    def test_it_requires_a_leading_letter(self, name):
        messages(validate_identifier, name)

    def test_it_rejects_names_over_63_characters(self):
        assert "63" in messages(validate_identifier, "x" * 64)

    @given(st.text(max_size=80))
    def test_it_accepts_only_what_needs_no_shell_quoting(self, name):
        try:
            validate_identifier(name)
        except ValidationError:
            return
        assert shlex.quote(name) == name
        assert not name.startswith("-")
        assert 1 <= len(name) <= 63

    @given(st.text(min_size=1), st.sampled_from(SHELL_META))
    def test_it_rejects_any_name_with_a_metacharacter(self, text, meta):
        name = "a" + text[: len(text) // 2] + meta + text[len(text) // 2 :]
        messages(validate_identifier, name)


class TestSlugName:
    @pytest.mark.parametrize("name", ["prod", "dr-site", "stage_2"])
    def test_it_accepts_environment_names(self, name):
        validate_slug_name(name)

    @pytest.mark.parametrize("name", ["Prod", "dr site", "prod;", "", "2prod", "$(x)"])
    def test_it_rejects_other_names(self, name):
        messages(validate_slug_name, name)


class TestUnixUser:
    @pytest.mark.parametrize("user", ["postgres", "pg_admin", "_svc", "dba-1"])
    def test_it_accepts_unix_user_names(self, user):
        validate_unix_user(user)

    @pytest.mark.parametrize(
        "user", ["", "Postgres", "1pg", "pg$", "root;id", "a b", "x" * 33, "-oProxy"]
    )
    def test_it_rejects_invalid_user_names(self, user):
        messages(validate_unix_user, user)

    @given(st.text(max_size=40))
    def test_it_accepts_only_what_needs_no_shell_quoting(self, user):
        try:
            validate_unix_user(user)
        except ValidationError:
            return
        assert shlex.quote(user) == user and not user.startswith("-")


class TestAbsolutePath:
    @pytest.mark.parametrize(
        "path",
        [
            "/var/lib/postgresql",
            "/var/lib/postgresql/",
            "/srv/pg/15/main",
            "/data/pg.d/a+b,c:d@e=f",
            "/",
        ],
    )
    def test_it_accepts_absolute_paths(self, path):
        validate_absolute_path(path)

    @pytest.mark.parametrize("path", ["var/lib", "", "./data", "~/data", "~postgres/data"])
    def test_it_requires_an_absolute_path(self, path):
        messages(validate_absolute_path, path)

    @pytest.mark.parametrize("hostile", HOSTILE)
    def test_it_rejects_shell_metacharacters(self, hostile):
        messages(validate_absolute_path, "/var/lib/" + hostile)

    @pytest.mark.parametrize("path", ["/var/lib/../../etc", "/..", "/var/..", "/a/../b"])
    def test_it_rejects_parent_components(self, path):
        assert "“..”" in messages(validate_absolute_path, path)

    def test_it_allows_dots_inside_names(self):
        validate_absolute_path("/srv/pg..old/x...y")

    def test_it_rejects_empty_components_and_option_like_ones(self):
        assert "//" in messages(validate_absolute_path, "/var//lib")
        assert "“-”" in messages(validate_absolute_path, "/var/-rf")

    @given(st.text(max_size=60))
    @example("/var/lib/postgresql/15/main")
    def test_it_accepts_only_safe_absolute_paths(self, path):
        try:
            validate_absolute_path(path)
        except ValidationError:
            return
        assert path.startswith("/")
        assert ".." not in path.split("/")
        assert shlex.quote(path) == path

    @given(st.text(max_size=30), st.sampled_from(SHELL_META), st.text(max_size=30))
    def test_it_rejects_any_path_with_a_metacharacter(self, before, meta, after):
        messages(validate_absolute_path, f"/{before}{meta}{after}")

    def test_it_normalises_and_joins_paths(self):
        assert normalise_path("/var/lib/postgresql/") == "/var/lib/postgresql"
        assert normalise_path("/") == "/"
        assert join_path("/var/lib/postgresql/", "15", "main") == "/var/lib/postgresql/15/main"
        assert join_path("/", "15", "main") == "/15/main"


class TestHostname:
    @pytest.mark.parametrize(
        "host",
        [
            "db1",
            "db1.example.com",
            "DB-1.Example.COM",
            "1db.example.com",
            "127.0.1.1",
            "10.0.0.254",
            "::1",
            "fe80::1",
            "2001:db8::5",
            "a" * 63 + ".example.com",
        ],
    )
    def test_it_accepts_names_and_addresses(self, host):
        validate_hostname(host)

    @pytest.mark.parametrize("hostile", HOSTILE)
    def test_it_rejects_hostile_names(self, hostile):
        messages(validate_hostname, "db" + hostile)

    @pytest.mark.parametrize(
        "host",
        [
            "",
            "-db",
            "db-",
            "db..example",
            ".db",
            "db_1",
            "a" * 64 + ".example.com",
            ".".join(["a" * 63] * 4) + ".example",
            "-oProxyCommand=id",
            "db.example.com.",
        ],
    )
    def test_it_rejects_invalid_names(self, host):
        messages(validate_hostname, host)

    @pytest.mark.parametrize("host", ["10.0.0.300", "127.0.1", "1.2.3.4.5", "999"])
    def test_it_reports_bad_ip_addresses(self, host):
        assert "IP address" in messages(validate_hostname, host)

    def test_it_normalises_case_and_ipv6_spelling(self):
        assert normalise_hostname("DB1.Example.COM") == "db1.example.com"
        assert normalise_hostname("2001:DB8:0:0::5") == "2001:db8::5"

    @given(st.text(max_size=80))
    def test_it_accepts_only_what_needs_no_shell_quoting(self, host):
        try:
            validate_hostname(host)
        except ValidationError:
            return
        # An IPv6 address needs quoting only for its colons, which no shell treats
        # specially; everything else accepted must come out of shlex.quote unchanged.
        assert shlex.quote(host) == host or set(host) <= set("0123456789abcdefABCDEF:.")
        assert not host.startswith("-")

    @given(
        st.lists(
            st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
            min_size=1,
            max_size=5,
        )
    )
    def test_it_accepts_any_rfc1123_name(self, labels):
        assume(not labels[-1].isdigit())
        validate_hostname(".".join(labels))


class TestDnsName:
    def test_it_accepts_names_with_or_without_the_final_dot(self):
        validate_dns_name("billing.lab.elephaas.test")
        validate_dns_name("billing.lab.elephaas.test.")

    def test_it_rejects_ip_addresses_with_a_reason(self):
        assert "IP address" in messages(validate_dns_name, "10.0.0.1")

    @pytest.mark.parametrize("hostile", HOSTILE)
    def test_it_rejects_hostile_names(self, hostile):
        messages(validate_dns_name, "billing" + hostile + ".example.com")


class TestLsn:
    @pytest.mark.parametrize("lsn", ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/5a000000"])
    def test_it_accepts_lsns(self, lsn):
        validate_lsn(lsn)

    @pytest.mark.parametrize("lsn", ["", "16", "16/", "/1", "G/0", "1/2/3", "123456789/0", "0/0\n"])
    def test_it_rejects_other_text(self, lsn):
        assert "WAL location" in messages(validate_lsn, lsn)


class TestHostKey:
    # The lab's kind of key: an ed25519 public key blob (type string + 32-byte key).
    BLOB = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(range(32))
    KEY = base64.b64encode(BLOB).decode()

    def test_it_computes_openssh_fingerprints(self):
        fingerprint = sha256_fingerprint(self.KEY)
        validate_host_key_fingerprint(fingerprint)
        assert fingerprint.startswith("SHA256:") and not fingerprint.endswith("=")

    @given(st.binary(min_size=1, max_size=600))
    def test_it_formats_every_fingerprint_validly(self, blob):
        validate_host_key_fingerprint(sha256_fingerprint(base64.b64encode(blob).decode()))

    @pytest.mark.parametrize("key", ["", "not base64!", "AAAA$(id)", "AAAA\nAAAA"])
    def test_it_rejects_keys_that_are_not_base64(self, key):
        messages(validate_host_key, key)

    @pytest.mark.parametrize(
        "fingerprint", ["", "MD5:aa:bb", "SHA256:short", "SHA256:" + "A" * 43 + "\n"]
    )
    def test_it_rejects_malformed_fingerprints(self, fingerprint):
        messages(validate_host_key_fingerprint, fingerprint)

    def test_it_accepts_known_key_types_only(self):
        validate_host_key_type("ssh-ed25519")
        assert "ssh-ed25519" in messages(validate_host_key_type, "ssh-dss")
