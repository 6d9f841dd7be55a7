"""Topology layout and its SVG, without the database: plain nodes in, positions and markup
out, with the inventory at its worst (hostile names, loops, missing upstreams, 0 and 50
nodes, split brains)."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herds.topology import COMPACT, FULL, EdgeKind, Node, NodeState, layout
from herds.topology_svg import render, safe_id
from instances.choices import Role

MB = 1024 * 1024
SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('x')</script>&\"'"


@pytest.fixture(autouse=True)
def thresholds(settings):
    settings.HEALTH_LAG_BYTES = 16 * MB
    settings.HEALTH_LAG_SECONDS = 60.0


def primary(key=1, **fields) -> Node:
    fields.setdefault("online", True)
    return Node(key=key, server=f"db{key}", port=5432, role=Role.PRIMARY, **fields)


def replica(key, upstream, **fields) -> Node:
    fields.setdefault("online", True)
    fields.setdefault("upstream_streaming", True)
    fields.setdefault("lag_bytes", 0)
    fields.setdefault("lag_seconds", 0.0)
    return Node(
        key=key, server=f"db{key}", port=5432, role=Role.REPLICA, upstream=upstream, **fields
    )


def boxes_overlap(a, b, geometry=FULL) -> bool:
    return not (
        a.x + geometry.node_width <= b.x
        or b.x + geometry.node_width <= a.x
        or a.y + geometry.node_height <= b.y
        or b.y + geometry.node_height <= a.y
    )


def assert_sound(nodes: list[Node], geometry=FULL) -> None:
    """Every distinct key placed exactly once, inside the picture, no two boxes overlapping,
    every edge between placed nodes, and the SVG well-formed."""
    result = layout(nodes, geometry=geometry)
    keys = [p.node.key for p in result.nodes]
    assert sorted(keys) == sorted({n.key for n in nodes})
    for placed in result.nodes:
        assert 0 <= placed.x and placed.x + geometry.node_width <= result.width
        assert 0 <= placed.y and placed.y + geometry.node_height <= result.height
    for i, a in enumerate(result.nodes):
        for b in result.nodes[i + 1 :]:
            assert not boxes_overlap(a, b, geometry), (a.node.key, b.node.key)
    for edge in result.edges:
        assert edge.source in keys and edge.target in keys
    ET.fromstring(render(result, title="t"))


def test_it_places_the_primary_its_replicas_and_a_cascade_left_to_right():
    result = layout([primary(1), replica(2, 1), replica(3, 1), replica(4, 2)])
    column = {p.node.key: p.column for p in result.nodes}
    assert column == {1: 0, 2: 1, 3: 1, 4: 2}
    placed = {p.node.key: p for p in result.nodes}
    # The primary sits level with the middle of its replicas, a cascade level with its own.
    assert placed[1].y == (placed[2].y + placed[3].y) / 2
    assert placed[4].y == placed[2].y
    assert {(e.source, e.target, e.kind) for e in result.edges} == {
        (1, 2, EdgeKind.STREAMING),
        (1, 3, EdgeKind.STREAMING),
        (2, 4, EdgeKind.STREAMING),
    }
    assert result.problems == () and not result.split_brain


def test_it_escapes_every_text_it_draws():
    nodes = [
        Node(key=1, server=HOSTILE, port=5432, role=Role.PRIMARY, online=True, url=HOSTILE),
        replica(
            2, 1, environment=HOSTILE, dr_priority=1, last_error=HOSTILE, upstream_streaming=False
        ),
    ]
    svg = render(layout(nodes, herd_environment="prod"), title=HOSTILE, id_prefix=HOSTILE)
    assert "<script" not in svg and "alert('x')" not in svg
    root = ET.fromstring(svg)  # well-formed: nothing broke out of a text or an attribute
    assert root.get("aria-label") == HOSTILE
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    # The address is cut to fit its box, but what is shown is the name, unescaped once.
    assert any(text.startswith("<script>") for text in texts)
    assert any(HOSTILE in "".join(t.itertext()) for t in root.iter(f"{SVG}title"))
    links = [a.get("href") for a in root.iter(f"{SVG}a")]
    assert links == [HOSTILE]
    # Marker ids land in url(#…): only safe characters.
    assert all(
        set(m.get("id")) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        for m in root.iter(f"{SVG}marker")
    )


def test_it_keeps_marker_ids_of_two_pictures_apart():
    nodes = [primary(1), replica(2, 1)]
    first, second = (
        render(layout(nodes), title="a", id_prefix=1),
        render(layout(nodes), title="b", id_prefix=2),
    )
    ids = lambda svg: {m.get("id") for m in ET.fromstring(svg).iter(f"{SVG}marker")}  # noqa: E731
    assert ids(first) and not ids(first) & ids(second)
    assert safe_id("") == "t" and safe_id('h1"><x') == "h1___x"


def test_it_draws_a_note_for_a_herd_without_instances():
    result = layout([])
    assert result.nodes == () and result.edges == () and result.problems == ()
    svg = render(result, title="empty")
    assert "No instance recorded." in svg
    ET.fromstring(svg)


def test_it_places_50_replicas_of_one_primary_without_overlap():
    nodes = [primary(1)] + [replica(key, 1) for key in range(2, 51)]
    assert_sound(nodes)
    assert_sound(nodes, COMPACT)
    result = layout(nodes)
    assert len(result.edges) == 49
    # Two columns, however many replicas: the picture grows down, not across.
    assert result.width == 2 * 12 + 2 * FULL.node_width + FULL.column_gap


def test_it_places_a_chain_deeper_than_the_recursion_limit():
    depth = sys.getrecursionlimit() + 100
    nodes = [primary(0)] + [replica(key, key - 1) for key in range(1, depth)]
    result = layout(nodes)
    assert max(p.column for p in result.nodes) == depth - 1
    assert len({p.y for p in result.nodes}) == 1


def test_it_keeps_a_replica_whose_upstream_is_missing():
    result = layout([primary(1), replica(2, 1), replica(3, 99)])
    lost = result.placed(3)
    assert lost.column == 0 and "upstream not in this herd" in lost.alarms
    assert {(e.source, e.target) for e in result.edges} == {(1, 2)}
    assert "1 replica(s) whose upstream is not in this herd" in result.problems


def test_it_says_when_a_replica_has_no_recorded_upstream():
    result = layout([primary(1), replica(2, None)])
    assert "upstream not recorded" in result.placed(2).alarms


def test_it_survives_upstream_loops():
    nodes = [
        primary(1),
        replica(2, 1),
        # 3 → 4 → 5 → 3, and 6 hangs off the loop; 7 is its own upstream.
        replica(3, 5),
        replica(4, 3),
        replica(5, 4),
        replica(6, 4),
        replica(7, 7),
    ]
    assert_sound(nodes)
    result = layout(nodes)
    loops = {(e.source, e.target) for e in result.edges if e.kind == EdgeKind.LOOP}
    assert loops == {(5, 3), (3, 4), (4, 5), (7, 7)}
    assert {e.target for e in result.edges if e.back} >= {3, 7}
    for key in (3, 4, 5, 7):
        assert "upstream loop" in result.placed(key).alarms
    # Hanging off a loop is not being in one; its edge is still classified.
    assert "upstream loop" not in result.placed(6).alarms
    assert "4 instance(s) in an upstream loop" in result.problems
    svg = render(result, title="loops")
    assert svg.count('class="edge edge-loop"') == 4


def test_it_drops_duplicate_keys():
    result = layout([primary(1), primary(1, online=False), replica(2, 1)])
    assert [p.node.key for p in result.nodes].count(1) == 1
    assert result.placed(1).state == NodeState.ONLINE


def test_it_makes_a_split_brain_unmistakable():
    result = layout([primary(1), primary(2), replica(3, 1)])
    assert result.split_brain and result.banner == "SPLIT-BRAIN: 2 primaries"
    for key in (1, 2):
        assert result.placed(key).state == NodeState.SPLIT_BRAIN
        assert "SPLIT-BRAIN" in result.placed(key).alarms
    assert result.placed(3).state == NodeState.ONLINE
    svg = render(result, title="sb")
    assert 'class="banner"' in svg and "SPLIT-BRAIN: 2 primaries" in svg
    assert svg.count('class="node node-split_brain"') == 2


def test_it_calls_a_fenced_primary_that_answers_a_split_brain():
    result = layout([primary(1), primary(2, fenced=True)])
    assert result.placed(2).state == NodeState.SPLIT_BRAIN
    assert result.placed(2).alarms == ("SPLIT-BRAIN", "FENCED: unconfirmed")
    assert "SPLIT-BRAIN: fenced db2:5432 answers as a primary" in result.problems


def test_it_draws_a_fenced_primary_that_is_down_as_fenced():
    result = layout(
        [primary(1, timeline=4), primary(2, online=False, fenced=True, fence_confirmed=True)]
    )
    assert not result.split_brain and result.banner == ""
    assert result.placed(2).state == NodeState.FENCED
    assert result.placed(2).alarms == ("FENCED",)
    assert 'class="node node-fenced"' in render(result, title="f")


@pytest.mark.parametrize(
    ("upstream", "fields", "kind"),
    [
        ({}, {}, EdgeKind.STREAMING),
        ({}, {"lag_bytes": 20 * MB}, EdgeKind.LAGGING),
        ({}, {"lag_seconds": 90.0}, EdgeKind.LAGGING),
        ({}, {"upstream_streaming": False}, EdgeKind.NOT_STREAMING),
        ({"online": False}, {"upstream_streaming": False}, EdgeKind.UPSTREAM_GONE),
        ({}, {"needs_remaster": True}, EdgeKind.WRONG_UPSTREAM),
        ({"online": False, "fenced": True}, {}, EdgeKind.WRONG_UPSTREAM),
        ({}, {"online": False}, EdgeKind.REPLICA_OFFLINE),
        ({}, {"online": None}, EdgeKind.UNKNOWN),
        ({}, {"upstream_streaming": None}, EdgeKind.UNKNOWN),
    ],
)
def test_it_draws_replication_as_the_instance_list_classifies_it(upstream, fields, kind):
    result = layout([primary(1, **upstream), replica(2, 1, **fields)])
    [edge] = result.edges
    assert edge.kind == kind
    assert edge.kind.broken == (
        kind
        in (
            EdgeKind.NOT_STREAMING,
            EdgeKind.UPSTREAM_GONE,
            EdgeKind.WRONG_UPSTREAM,
            EdgeKind.REPLICA_OFFLINE,
        )
    )
    svg = render(result, title="e")
    assert f'class="edge edge-{kind.value}"' in svg
    if kind.broken:
        assert (
            "stroke-dasharray" in svg.split(f'class="edge edge-{kind.value}"')[1].split("</g>")[0]
        )


def test_it_flags_a_replica_on_another_timeline_than_its_upstream():
    result = layout([primary(1, timeline=3), replica(2, 1, timeline=2), replica(3, 1, timeline=3)])
    assert "timeline 2, upstream on 3" in result.placed(2).alarms
    assert not result.placed(3).alarms
    assert "timeline 3" in render(result, title="tl")


def test_it_marks_the_dr_copy_and_its_site():
    result = layout(
        [primary(1, environment="prod"), replica(2, 1, dr_priority=1, environment="dr")],
        herd_environment="prod",
    )
    assert result.placed(2).facts == ("DR copy #1", "in dr")
    assert result.placed(1).facts == ()
    svg = render(result, title="dr")
    assert ">DR #1</text>" in svg and "replica · timeline ? · in dr" in svg


@pytest.mark.parametrize("geometry", [FULL, COMPACT])
def test_every_node_shows_server_role_state_lag_and_timeline(geometry):
    result = layout(
        [
            primary(1, timeline=2),
            replica(2, 1, lag_bytes=3 * MB, lag_seconds=4.0, timeline=2),
        ],
        geometry=geometry,
    )
    root = ET.fromstring(render(result, title="lag"))
    node = next(g for g in root.iter(f"{SVG}g") if g.get("data-key") == "2")
    lines = ["".join(t.itertext()) for t in node.iter(f"{SVG}text")]
    shown = " | ".join(lines)
    assert lines[0] == "db2:5432"
    for fact in ("replica", "● online", "lag 3.0 MB, 4 s"):
        assert fact in shown, (fact, shown)
    assert ("timeline 2" if geometry is FULL else "TL 2") in shown
    primary_node = next(g for g in root.iter(f"{SVG}g") if g.get("data-key") == "1")
    assert "PRIMARY" in "".join(primary_node.itertext())


def test_it_keeps_edge_labels_apart():
    nodes = [primary(1)] + [replica(k, 1, upstream_streaming=False) for k in range(2, 8)]
    root = ET.fromstring(render(layout(nodes, geometry=COMPACT), title="labels"))
    ys = sorted(
        float(t.get("y"))
        for g in root.iter(f"{SVG}g")
        if g.get("class") == "edge-label"
        for t in g.iter(f"{SVG}text")
    )
    assert len(ys) == 6
    assert all(b - a >= 13 for a, b in zip(ys, ys[1:], strict=False))


nodes_strategy = st.lists(
    st.builds(
        Node,
        key=st.integers(0, 30),
        server=st.text(max_size=40),
        port=st.integers(1, 65535),
        role=st.sampled_from(list(Role)),
        online=st.sampled_from([True, False, None]),
        upstream=st.one_of(st.none(), st.integers(0, 35)),
        upstream_streaming=st.sampled_from([True, False, None]),
        lag_bytes=st.one_of(st.none(), st.integers(0, 2**40)),
        lag_seconds=st.one_of(st.none(), st.floats(0, 1e6)),
        timeline=st.one_of(st.none(), st.integers(1, 2**32 - 1)),
        fenced=st.booleans(),
        needs_remaster=st.booleans(),
        dr_priority=st.one_of(st.none(), st.integers(0, 10)),
        environment=st.text(max_size=10),
        last_error=st.text(max_size=50),
        url=st.text(max_size=20),
    ),
    max_size=40,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(nodes_strategy)
def test_any_inventory_is_placed_whole_and_drawn_well_formed(nodes):
    assert_sound(nodes)
    assert_sound(nodes, COMPACT)


def test_it_replaces_characters_xml_cannot_carry():
    svg = render(layout([Node(key=1, server="db\x00\x1b1", port=1)]), title="\x0c")
    ET.fromstring(svg)
    assert "db\ufffd\ufffd1:1" in svg
