"""Server and instance admin: list pages at any fleet size, and pinning host keys."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from herds.models import Environment
from instances.models import Instance, Role, Server
from tests.factories import make_environment, make_herd, make_instance, make_server

pytestmark = pytest.mark.django_db

INSTANCES_URL = reverse("admin:instances_instance_changelist")
SERVERS_URL = reverse("admin:instances_server_changelist")
ADD_SERVER_URL = reverse("admin:instances_server_add")
# Nothing listens here: a lab-range loopback address the lab never uses.
UNREACHABLE = "127.0.1.250"


def grow_fleet(environment: Environment, instances: int) -> None:
    """Add herds of one primary and up to four replicas, each on its own server."""
    added = 0
    while added < instances:
        herd = make_herd(environment=environment)
        primary = make_instance(herd=herd, role=Role.PRIMARY, online=True, last_lsn="0/5A000000")
        added += 1
        for online in (True, False, None, True)[: instances - added]:
            make_instance(herd=herd, upstream=primary, online=online, lag_bytes=8192)
            added += 1


def queries_for(client, url: str) -> int:
    client.get(url)  # warm caches (content types, session) out of the measurement
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


class TestInstanceList:
    def test_it_lists_instances_with_their_state(self, admin_client):
        primary = make_instance(role=Role.PRIMARY, online=True)
        make_instance(herd=primary.herd, upstream=primary, online=False, lag_bytes=3 * 1024**2)
        make_instance(herd=primary.herd, role=Role.UNKNOWN)
        response = admin_client.get(INSTANCES_URL)
        page = response.content.decode()
        assert response.status_code == 200
        assert "● online" in page and "● offline" in page and "● unknown" in page
        assert primary.address in page
        assert "3.0 MB" in page

    @pytest.mark.parametrize(
        "query",
        ["", "?role__exact=replica", "?q=herd", "?online__exact=1&o=6", "?pg_version=15"],
    )
    def test_it_costs_the_same_queries_for_10_and_200_instances(self, admin_client, query):
        environment = make_environment()
        grow_fleet(environment, 10)
        small = queries_for(admin_client, INSTANCES_URL + query)
        grow_fleet(environment, 190)
        assert Instance.objects.count() == 200
        assert queries_for(admin_client, INSTANCES_URL + query) == small

    def test_it_filters_by_environment_and_herd(self, admin_client):
        wanted = make_instance()
        other = make_instance()
        environment_id = wanted.herd.environment_id
        page = admin_client.get(
            f"{INSTANCES_URL}?herd__environment__id__exact={environment_id}"
        ).content.decode()
        assert wanted.address in page and other.address not in page
        page = admin_client.get(f"{INSTANCES_URL}?herd__id__exact={other.herd_id}").content.decode()
        assert other.address in page and wanted.address not in page

    def test_it_searches_by_server_hostname(self, admin_client):
        make_instance(server=make_server(hostname="needle.example.test"))
        make_instance(server=make_server(hostname="hay.example.test"))
        page = admin_client.get(INSTANCES_URL + "?q=needle").content.decode()
        assert "needle.example.test" in page and "hay.example.test" not in page

    def test_it_stops_listing_herds_in_the_filter_when_there_are_too_many(self, admin_client):
        environment = make_environment()
        herds = [make_herd(environment=environment) for _ in range(51)]
        make_instance(herd=herds[0])
        page = admin_client.get(INSTANCES_URL).content.decode()
        assert f"herd__id__exact={herds[0].pk}" not in page
        # ...but keeps showing the herd already filtered on, so it can be cleared.
        page = admin_client.get(f"{INSTANCES_URL}?herd__id__exact={herds[0].pk}").content.decode()
        assert re.search(rf"selected.*?{herds[0].name}", page, re.S)

    def test_it_shows_the_change_page_with_topology_fields(self, admin_client):
        instance = make_instance()
        url = reverse("admin:instances_instance_change", args=[instance.pk])
        response = admin_client.get(url)
        assert response.status_code == 200
        assert "Observed state" in response.content.decode()

    def test_it_refuses_an_upstream_from_another_herd_in_the_form(self, admin_client):
        replica = make_instance()
        stranger = make_instance(role=Role.PRIMARY)
        url = reverse("admin:instances_instance_change", args=[replica.pk])
        response = admin_client.post(
            url,
            {
                "herd": replica.herd_id,
                "server": replica.server_id,
                "port": replica.port,
                "pg_version": replica.pg_version,
                "data_dir": "",
                "role": Role.REPLICA,
                "upstream": stranger.pk,
                "notes": "",
            },
        )
        assert response.status_code == 200
        assert "a replica streams from an instance of its own herd" in response.content.decode()
        replica.refresh_from_db()
        assert replica.upstream_id is None


class TestInstanceForm:
    def test_it_takes_port_and_version_from_the_herd_when_left_blank(self, admin_client):
        herd = make_herd(port=5433, pg_version=16)
        server = make_server()
        response = admin_client.post(
            reverse("admin:instances_instance_add"),
            {
                "herd": herd.pk,
                "server": server.pk,
                "port": "",
                "pg_version": "",
                "data_dir": "",
                "role": Role.PRIMARY,
                "upstream": "",
                "notes": "",
            },
        )
        assert response.status_code == 302
        instance = Instance.objects.get()
        assert (instance.port, instance.pg_version) == (5433, 16)

    def test_it_refuses_a_port_already_used_on_the_server(self, admin_client):
        taken = make_instance(port=5432)
        response = admin_client.post(
            reverse("admin:instances_instance_add"),
            {
                "herd": make_herd().pk,
                "server": taken.server_id,
                "port": "",
                "pg_version": "",
                "data_dir": "",
                "role": Role.REPLICA,
                "upstream": "",
                "notes": "",
            },
        )
        assert "Another instance on this server already uses this port." in (
            response.content.decode()
        )
        assert Instance.objects.count() == 1


class TestServerList:
    def test_it_lists_servers(self, admin_client):
        server = make_server(hostname="db42.example.test", ssh_user="pgadmin")
        make_instance(server=server)
        page = admin_client.get(SERVERS_URL).content.decode()
        assert "db42.example.test" in page and "pgadmin" in page

    def test_it_costs_the_same_queries_for_10_and_200_servers(self, admin_client):
        environment = make_environment()
        for _ in range(10):
            make_instance(server=make_server(environment=environment))
        small = queries_for(admin_client, SERVERS_URL)
        for _ in range(190):
            make_instance(server=make_server(environment=environment))
        assert queries_for(admin_client, SERVERS_URL) == small


class TestAddServerPage:
    def test_it_shows_the_controllers_public_key(self, admin_client, tmp_path):
        # The web server may not be able to read the private key; the .pub file suffices.
        key = tmp_path / "id_ed25519"
        (tmp_path / "id_ed25519.pub").write_text(TEST_PUBLIC_KEY + "\n")
        with override_settings(SSH_PRIVATE_KEY=str(key)):
            page = admin_client.get(ADD_SERVER_URL).content.decode()
        assert TEST_PUBLIC_KEY in page
        assert "authorized_keys" in page

    def test_it_says_clearly_when_the_public_key_is_missing(self, admin_client, tmp_path):
        missing = tmp_path / "nothing_here"
        with override_settings(SSH_PRIVATE_KEY=str(missing)):
            page = admin_client.get(ADD_SERVER_URL).content.decode()
        assert 'id="controller-public-key-missing"' in page
        assert f"{missing}.pub" in page and "ssh-keygen -y -f" in page

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("hostname", "127.0.1.1; reboot"),
            ("hostname", "$(id)"),
            ("hostname", "-oProxyCommand=id"),
            ("ssh_user", "postgres;id"),
            ("ssh_port", "0"),
            ("ssh_port", "65536"),
        ],
    )
    def test_it_refuses_hostile_input_before_connecting(self, admin_client, field, value):
        data = {
            "hostname": "db1.example.test",
            "environment": make_environment().pk,
            "ssh_port": "22",
            "ssh_user": "postgres",
            field: value,
        }
        response = admin_client.post(ADD_SERVER_URL, data)
        assert response.status_code == 200
        form = response.context["adminform"].form
        assert form.errors[field]
        # No connection was tried: that would have left an SSH error here.
        assert not form.non_field_errors()
        assert not Server.objects.exists()


def add_server_data(environment: Environment, **overrides) -> dict[str, str]:
    data = {
        "hostname": "",
        "environment": str(environment.pk),
        "ssh_port": "22",
        "ssh_user": "postgres",
        "notes": "",
    }
    data.update({key: str(value) for key, value in overrides.items()})
    return data


def carried_fields(response) -> dict[str, str]:
    """The hidden fields the first submit carries to the second, as a browser would."""
    form = response.context["adminform"].form
    names = ("host_key_type", "host_key", "host_key_fingerprint", "key_source")
    return {name: form[name].value() for name in names}


def form_errors(response) -> str:
    return " ".join(response.context["adminform"].form.non_field_errors())


@pytest.mark.lab
class TestAddServerOnTheLab:
    def test_it_reports_an_unreachable_host_and_saves_nothing(self, admin_client, lab):
        data = add_server_data(make_environment(), hostname=UNREACHABLE)
        response = admin_client.post(ADD_SERVER_URL, data)
        assert response.status_code == 200
        errors = form_errors(response)
        assert UNREACHABLE in errors and "refused" in errors
        assert not Server.objects.exists()

    def test_it_reports_a_port_where_no_ssh_listens(self, admin_client, lab_servers):
        server = lab_servers[0]
        data = add_server_data(make_environment(), hostname=server.hostname, ssh_port=1)
        response = admin_client.post(ADD_SERVER_URL, data)
        assert f"{server.hostname}:1" in form_errors(response)
        assert not Server.objects.exists()

    def test_it_shows_the_fingerprint_then_pins_the_key(self, admin_client, lab_servers):
        lab_server = lab_servers[0]
        data = add_server_data(make_environment(), hostname=lab_server.hostname)
        first = admin_client.post(ADD_SERVER_URL, data)
        assert first.status_code == 200
        page = first.content.decode()
        assert lab_server.host_key_fingerprint in page
        assert "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub" in page
        assert 'name="fingerprint_checked"' in page and 'type="checkbox"' in page
        assert not Server.objects.exists()

        second = admin_client.post(
            ADD_SERVER_URL, {**data, **carried_fields(first), "fingerprint_checked": "on"}
        )
        assert second.status_code == 302, form_errors(second)
        server = Server.objects.get()
        assert server.hostname == lab_server.hostname
        assert (server.host_key_type, server.host_key, server.host_key_fingerprint) == (
            lab_server.host_key_type,
            lab_server.host_key,
            lab_server.host_key_fingerprint,
        )
        assert server.last_contact is not None

    def test_it_insists_on_the_tick_box(self, admin_client, lab_servers):
        data = add_server_data(make_environment(), hostname=lab_servers[0].hostname)
        first = admin_client.post(ADD_SERVER_URL, data)
        second = admin_client.post(ADD_SERVER_URL, {**data, **carried_fields(first)})
        assert "Tick “I checked this fingerprint”" in form_errors(second)
        assert not Server.objects.exists()

    def test_it_fetches_again_when_the_address_changed(self, admin_client, lab_servers):
        environment = make_environment()
        first = admin_client.post(
            ADD_SERVER_URL, add_server_data(environment, hostname=lab_servers[0].hostname)
        )
        data = add_server_data(environment, hostname=lab_servers[1].hostname)
        second = admin_client.post(
            ADD_SERVER_URL, {**data, **carried_fields(first), "fingerprint_checked": "on"}
        )
        assert lab_servers[1].host_key_fingerprint in form_errors(second)
        assert not Server.objects.exists()

    def test_it_refuses_a_carried_key_the_server_does_not_have(self, admin_client, lab_servers):
        environment = make_environment()
        data = add_server_data(environment, hostname=lab_servers[0].hostname)
        first = admin_client.post(ADD_SERVER_URL, data)
        forged = carried_fields(first)
        forged.update(
            host_key=lab_servers[1].host_key,
            host_key_fingerprint=lab_servers[1].host_key_fingerprint,
        )
        second = admin_client.post(ADD_SERVER_URL, {**data, **forged, "fingerprint_checked": "on"})
        assert "host key changed" in form_errors(second)
        assert not Server.objects.exists()

    def test_it_fetches_again_when_the_carried_fingerprint_is_not_the_keys(
        self, admin_client, lab_servers
    ):
        data = add_server_data(make_environment(), hostname=lab_servers[0].hostname)
        first = admin_client.post(ADD_SERVER_URL, data)
        forged = {**carried_fields(first), "host_key_fingerprint": "SHA256:" + "A" * 43}
        second = admin_client.post(ADD_SERVER_URL, {**data, **forged, "fingerprint_checked": "on"})
        assert "presents the ssh-ed25519 host key" in form_errors(second)
        assert not Server.objects.exists()

    def test_it_reports_a_user_that_refuses_the_key(self, admin_client, lab_servers):
        data = add_server_data(
            make_environment(), hostname=lab_servers[0].hostname, ssh_user="nobody"
        )
        first = admin_client.post(ADD_SERVER_URL, data)
        second = admin_client.post(
            ADD_SERVER_URL, {**data, **carried_fields(first), "fingerprint_checked": "on"}
        )
        errors = form_errors(second)
        assert "nobody@" in errors and "nothing was saved" in errors
        assert not Server.objects.exists()


def pin_url(server: Server) -> str:
    return reverse("admin:instances_server_pin_host_key", args=[server.pk])


def staff_user(*codenames: str) -> User:
    user = User.objects.create_user("operator", password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="instances", codename__in=codenames)
    )
    return user


class TestRepinPermission:
    def test_it_refuses_a_user_without_the_permission(self, client):
        client.force_login(staff_user("view_server", "change_server"))
        server = make_server()
        assert client.get(pin_url(server)).status_code == 403
        change = client.get(reverse("admin:instances_server_change", args=[server.pk]))
        assert "Re-pin host key" not in change.content.decode()

    def test_it_offers_re_pinning_to_a_user_with_the_permission(self, client):
        client.force_login(staff_user("view_server", "change_server", "pin_host_key"))
        server = make_server()
        change = client.get(reverse("admin:instances_server_change", args=[server.pk]))
        assert "Re-pin host key" in change.content.decode()
        assert client.get(pin_url(server)).status_code == 200


@pytest.mark.lab
class TestRepinOnTheLab:
    def pinned_with_wrong_key(self, lab_servers) -> Server:
        """The first lab server, pinned to the second's key: as after a reinstall."""
        real, other = lab_servers[0], lab_servers[1]
        return make_server(
            hostname=real.hostname,
            ssh_port=real.ssh_port,
            ssh_user=real.ssh_user,
            host_key_type=other.host_key_type,
            host_key=other.host_key,
            host_key_fingerprint=other.host_key_fingerprint,
        )

    def test_it_shows_old_and_new_then_pins_the_new_key(self, admin_client, lab_servers):
        server = self.pinned_with_wrong_key(lab_servers)
        first = admin_client.post(pin_url(server), {})
        page = first.content.decode()
        assert lab_servers[1].host_key_fingerprint in page  # pinned now
        assert lab_servers[0].host_key_fingerprint in page  # presented now
        form = first.context["form"]
        carried = {
            name: form[name].value()
            for name in ("host_key_type", "host_key", "host_key_fingerprint", "key_source")
        }
        second = admin_client.post(pin_url(server), {**carried, "fingerprint_checked": "on"})
        assert second.status_code == 302
        server.refresh_from_db()
        assert server.host_key == lab_servers[0].host_key
        assert server.host_key_fingerprint == lab_servers[0].host_key_fingerprint

    def test_it_says_when_there_is_nothing_to_re_pin(self, admin_client, lab_servers):
        real = lab_servers[0]
        server = make_server(
            hostname=real.hostname,
            host_key_type=real.host_key_type,
            host_key=real.host_key,
            host_key_fingerprint=real.host_key_fingerprint,
        )
        response = admin_client.post(pin_url(server), {})
        assert "nothing to re-pin" in response.content.decode()


# Only its public half exists, which is what the add page shows.
TEST_PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLevi07pfEh1GzUVI3oIAkHD+/kXo6xdy/l+QLskxSO elephaas-test"
)
