"""Topology pages: the herd page's picture and its SVG refresh URL, the fleet topology
page and its fragment; who may see them; what they cost in queries."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from herds.models import Environment, Herd
from instances.models import Role
from tests.factories import make_dr_candidate, make_environment, make_herd, make_instance

pytestmark = pytest.mark.django_db

FLEET_URL = reverse("admin:herds_herd_topology")
SVG = "{http://www.w3.org/2000/svg}"
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def svg_url(herd: Herd) -> str:
    return reverse("admin:herds_herd_topology_svg", args=[herd.pk])


def user_client(username: str, *perms: str) -> Client:
    user = User.objects.create_user(username, password="x", is_staff=True)
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=perm))
    client = Client()
    client.force_login(user, backend=MODEL_BACKEND)
    return client


@pytest.fixture
def viewer() -> Client:
    return user_client("victor", "view_herd")


@pytest.fixture
def outsider() -> Client:
    """Staff, without any permission on herds."""
    return user_client("olga", "view_instance")


def grow(environment: Environment, herds: int) -> list[Herd]:
    """Herds of a primary, a replica, a cascade and a DR copy each."""
    made = []
    for _ in range(herds):
        herd = make_herd(environment=environment)
        primary = make_instance(herd=herd, role=Role.PRIMARY, online=True, timeline=2)
        replica = make_instance(
            herd=herd, upstream=primary, online=True, upstream_streaming=True, lag_bytes=0
        )
        make_instance(herd=herd, upstream=replica, online=False)
        make_dr_candidate(make_instance(herd=herd, upstream=primary, online=True))
        made.append(herd)
    return made


def refresh_url(page: str) -> str:
    """The URL the page's refresh script fetches (escapejs'd in the script)."""
    [raw] = re.findall(r'var url = "([^"]*)";', page)
    return json.loads(f'"{raw}"')


def queries_for(client: Client, url: str) -> int:
    client.get(url)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured)


def test_the_herd_page_shows_its_topology_and_where_to_refresh_it(admin_client):
    [herd] = grow(make_environment(), 1)
    page = admin_client.get(reverse("admin:herds_herd_change", args=[herd.pk])).content.decode()
    assert 'id="herd-topology"' in page and '<svg xmlns="http://www.w3.org/2000/svg"' in page
    assert page.count('class="node node-') == 4
    assert refresh_url(page) == svg_url(herd)
    assert "replication topology of herd" in page.lower()


def test_the_svg_url_serves_the_picture_alone(admin_client):
    [herd] = grow(make_environment(), 1)
    response = admin_client.get(svg_url(herd))
    assert response["Content-Type"] == "image/svg+xml; charset=utf-8"
    assert "default-src 'none'" in response["Content-Security-Policy"]
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    root = ET.fromstring(response.content)
    nodes = [g for g in root.iter(f"{SVG}g") if (g.get("class") or "").startswith("node ")]
    assert len(nodes) == 4
    # Each node links to its instance's page.
    hrefs = {a.get("href") for a in root.iter(f"{SVG}a")}
    assert all(h.startswith("/admin/instances/instance/") for h in hrefs) and len(hrefs) == 4


def test_it_answers_404_for_a_herd_that_does_not_exist(admin_client):
    assert (
        admin_client.get(reverse("admin:herds_herd_topology_svg", args=[999999])).status_code == 404
    )


def test_a_viewer_sees_the_pictures(viewer):
    [herd] = grow(make_environment(), 1)
    assert viewer.get(svg_url(herd)).status_code == 200
    page = viewer.get(FLEET_URL)
    assert page.status_code == 200 and herd.name in page.content.decode()
    # The herd page is read-only for a viewer, and shows the picture all the same.
    herd_page = viewer.get(reverse("admin:herds_herd_change", args=[herd.pk]))
    assert herd_page.status_code == 200 and 'id="herd-topology"' in herd_page.content.decode()


def test_the_viewer_role_sees_the_pictures():
    """The role LDAP's viewers get (herds/migrations/0004_roles.py), not a hand-picked
    permission."""
    user = User.objects.create_user("vera", password="x", is_staff=True)
    user.groups.add(Group.objects.get(name="viewer"))
    client = Client()
    client.force_login(user, backend=MODEL_BACKEND)
    [herd] = grow(make_environment(), 1)
    assert client.get(svg_url(herd)).status_code == 200
    assert client.get(FLEET_URL).status_code == 200
    index = client.get(reverse("admin:index")).content.decode()
    for part in ('id="fleet-herds"', 'id="fleet-lag"', 'id="fleet-day"', 'id="fleet-drills"'):
        assert part in index, part


def test_an_outsider_is_refused(outsider):
    [herd] = grow(make_environment(), 1)
    assert outsider.get(svg_url(herd)).status_code == 403
    assert outsider.get(FLEET_URL).status_code == 403
    assert outsider.get(FLEET_URL + "?fragment=1").status_code == 403


def test_a_visitor_who_is_not_logged_in_is_sent_to_the_login(client):
    [herd] = grow(make_environment(), 1)
    for url in (svg_url(herd), FLEET_URL):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_fleet_page_draws_every_herd_and_filters(admin_client):
    prod, dr = make_environment("prod"), make_environment("dr")
    shown = grow(prod, 2)
    other = make_herd("elsewhere", environment=dr)
    make_instance(herd=other, role=Role.PRIMARY, online=True)
    page = admin_client.get(FLEET_URL).content.decode()
    for herd in [*shown, other]:
        assert f'id="topology-herd-{herd.pk}"' in page
    assert 'id="fleet-topology-link"' not in page  # that link is the dashboard's
    only_dr = admin_client.get(FLEET_URL, {"environment": dr.pk}).content.decode()
    assert f'id="topology-herd-{other.pk}"' in only_dr
    assert all(f'id="topology-herd-{h.pk}"' not in only_dr for h in shown)
    by_server = admin_client.get(
        FLEET_URL, {"q": other.instances.get().server.hostname}
    ).content.decode()
    assert f'id="topology-herd-{other.pk}"' in by_server
    assert all(f'id="topology-herd-{h.pk}"' not in by_server for h in shown)


def test_the_fragment_is_the_pictures_alone_for_the_same_filters(admin_client):
    prod, dr = make_environment("prod"), make_environment("dr")
    [herd] = grow(prod, 1)
    make_herd("elsewhere", environment=dr)
    page = admin_client.get(FLEET_URL, {"environment": prod.pk}).content.decode()
    url = refresh_url(page)
    assert url == f"{FLEET_URL}?environment={prod.pk}&fragment=1&p=1"
    fragment = admin_client.get(url)
    text = fragment.content.decode()
    assert fragment["Content-Type"].startswith("text/html")
    assert "<html" not in text and "elsewhere" not in text
    assert f'id="topology-herd-{herd.pk}"' in text


def test_the_fleet_page_says_what_is_wrong_with_a_herd_in_words(admin_client):
    herd = make_herd("brainy")
    make_instance(herd=herd, role=Role.PRIMARY, online=True)
    make_instance(herd=herd, role=Role.PRIMARY, online=True)
    page = admin_client.get(FLEET_URL).content.decode()
    assert "SPLIT-BRAIN: 2 primaries answer" in page
    assert "topology-card-trouble" in page


def test_it_escapes_a_hostile_herd_name_on_every_page(admin_client):
    environment = make_environment()
    herd = Herd.objects.create(name="x", environment=environment, pg_version=15)
    # Past the validators, as a bulk import could: the pages must hold anyway.
    Herd.objects.filter(pk=herd.pk).update(name="<script>alert(1)</script>")
    make_instance(herd=Herd.objects.get(pk=herd.pk), role=Role.PRIMARY, online=True)
    for url in (FLEET_URL, svg_url(herd), reverse("admin:herds_herd_change", args=[herd.pk])):
        text = admin_client.get(url).content.decode()
        assert "<script>alert(1)" not in text, url
        assert "&lt;script&gt;alert(1)" in text, url


def test_the_fleet_page_pages_its_herds(admin_client):
    grow(make_environment(), 30)
    first = admin_client.get(FLEET_URL).content.decode()
    second = admin_client.get(FLEET_URL, {"p": 2}).content.decode()
    cards = '<section class="topology-card'
    assert first.count(cards) == 24 and second.count(cards) == 6
    assert "page 1 of 2" in first


def test_the_fleet_page_costs_the_same_queries_for_3_and_24_herds(admin_client):
    environment = make_environment()
    grow(environment, 3)
    small = queries_for(admin_client, FLEET_URL)
    grow(environment, 21)
    for _ in range(5):
        make_environment()
    assert queries_for(admin_client, FLEET_URL) == small
    assert queries_for(admin_client, FLEET_URL + "?fragment=1") <= small


def test_a_herds_svg_costs_the_same_queries_for_4_and_60_instances(admin_client):
    herd = make_herd()
    primary = make_instance(herd=herd, role=Role.PRIMARY, online=True)
    for _ in range(3):
        make_instance(herd=herd, upstream=primary, online=True)
    small = queries_for(admin_client, svg_url(herd))
    for _ in range(56):
        make_dr_candidate(make_instance(herd=herd, upstream=primary, online=True))
    assert queries_for(admin_client, svg_url(herd)) == small


def test_the_herd_list_links_to_the_fleet_topology(viewer):
    page = viewer.get(reverse("admin:herds_herd_changelist")).content.decode()
    assert f'<a href="{FLEET_URL}" id="herds-topology-link">Topology</a>' in page
