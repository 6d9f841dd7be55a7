"""The dashboard's small pictures, without the database: numbers in, SVG out."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from instances.charts import Column, Point, sparkline, stacked_columns, svg_text

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert(1)</script>&\"'"


def polylines(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return [
        [tuple(map(float, pair.split(","))) for pair in line.get("points").split()]
        for line in root.iter(f"{SVG}polyline")
    ]


def test_it_draws_a_line_across_the_window_scaled_to_top():
    points = [Point(0, 0), Point(50, 50), Point(100, 100)]
    svg = sparkline(points, start=0, end=100, top=100, width=104, height=24)
    [line] = polylines(svg)
    # 2 px of padding around: x from 2 to 102, y from 22 (0) to 2 (top).
    assert line == [(2, 22), (52, 12), (102, 2)]


def test_it_breaks_the_line_where_nothing_was_measured():
    points = [Point(0, 1), Point(10, 2), Point(20, None), Point(30, 3), Point(40, 4)]
    lines = polylines(sparkline(points, start=0, end=40, top=4))
    assert [len(line) for line in lines] == [2, 2]


def test_it_breaks_the_line_where_no_sweep_ran():
    points = [Point(0, 1), Point(10, 1), Point(100, 1), Point(110, 1)]
    assert len(polylines(sparkline(points, start=0, end=110, top=1, gap=25))) == 2
    assert len(polylines(sparkline(points, start=0, end=110, top=1))) == 1


def test_it_draws_a_lone_point_as_a_dot():
    svg = sparkline([Point(5, 1), Point(6, None)], start=0, end=10, top=1)
    assert polylines(svg) == [] and len(list(ET.fromstring(svg).iter(f"{SVG}circle"))) == 1


def test_it_turns_orange_past_the_threshold_and_draws_the_threshold():
    calm = sparkline([Point(0, 1), Point(1, 2)], start=0, end=1, top=10, threshold=5)
    rough = sparkline([Point(0, 1), Point(1, 6)], start=0, end=1, top=10, threshold=5)
    assert 'stroke="#2e7d32"' in calm and 'stroke="#b54300"' in rough
    assert 'stroke-dasharray="3 3"' in calm


def test_it_marks_buckets_seen_offline():
    svg = sparkline([Point(0, None, offline=True), Point(1, 1)], start=0, end=1, top=1)
    assert svg.count('fill="#ba2121"') == 1


def test_it_clamps_values_and_survives_an_empty_or_zero_window():
    svg = sparkline([Point(-50, 10**12), Point(500, -3)], start=0, end=0, top=0)
    for x, y in polylines(svg)[0]:
        assert 0 <= x <= 240 and 0 <= y <= 34
    ET.fromstring(sparkline([], start=0, end=1, top=1))


def test_it_escapes_titles_and_links():
    svg = sparkline([Point(0, 1)], start=0, end=1, top=1, title=HOSTILE)
    assert ET.fromstring(svg).get("aria-label") == HOSTILE and "<script" not in svg
    chart = stacked_columns(
        [Column(label=HOSTILE, url=HOSTILE, title=HOSTILE, parts=((1, "#000"),))]
    )
    root = ET.fromstring(chart)
    assert [a.get("href") for a in root.iter(f"{SVG}a")] == [HOSTILE]
    assert "<script" not in chart
    assert svg_text("a\x00b") == "a\ufffdb"


def test_it_stacks_columns_on_one_scale():
    columns = [
        Column("00:00", "/a", "a", ((3, "#0f0"), (1, "#f00"))),
        Column("", "/b", "b", ((2, "#0f0"),)),
        Column("", "", "c", ()),
    ]
    root = ET.fromstring(stacked_columns(columns, width=300, height=110))
    heights = [
        (r.get("fill"), float(r.get("height")))
        for r in root.iter(f"{SVG}rect")
        if r.get("fill") in ("#0f0", "#f00")
    ]
    # 80 px of chart (110 - 16 axis - 14 above); the tallest column (4 jobs) fills it.
    assert heights == [("#0f0", 60), ("#f00", 20), ("#0f0", 40)]
    # Every column but the one without a URL is a link, empty or not.
    assert [a.get("href") for a in root.iter(f"{SVG}a")] == ["/a", "/b"]
    assert [t.text for t in root.iter(f"{SVG}text")] == ["4", "00:00", "2"]
