"""A herd's topology layout (herds.topology) drawn as SVG. Pure: a layout in, markup out.

Every text and attribute value that comes from the inventory is escaped here, once; the
result is a standalone <svg> element that the herd page embeds, its refresh URL serves as
image/svg+xml, and the fleet page repeats per herd. Colours are attributes, not a <style>
element: a stylesheet inside an inline SVG would apply to the whole page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from herds.topology import (
    MARGIN,
    Edge,
    EdgeKind,
    Geometry,
    Layout,
    NodeState,
    Placed,
)
from instances.charts import svg_number, svg_text
from instances.choices import Role
from instances.wal import format_bytes, format_seconds

FONT = "-apple-system, 'Segoe UI', system-ui, Roboto, 'Helvetica Neue', Arial, sans-serif"
INK = "#1b1b1b"
GREEN = "#2e7d32"
RED = "#ba2121"
# Darker than the list badges' orange: it carries white text on the dashboard's tiles and
# thin lines here, and #e65100 is under 4:1 against white.
ORANGE = "#b54300"
GREY = "#666"
PRIMARY_BLUE = "#417690"  # the admin's own header blue
DR_TEAL = "#00695c"
ON_DARK_ALARM = "#ffd54f"

# (fill, stroke, stroke width, dash, text colour) per node state.
NODE_STYLES = {
    NodeState.ONLINE: ("#ffffff", GREEN, 2, "", INK),
    NodeState.OFFLINE: ("#fdecea", RED, 2.5, "", INK),
    NodeState.UNKNOWN: ("#f2f2f2", GREY, 2, "5 3", INK),
    NodeState.FENCED: ("#2b2b2b", "#000000", 3, "", "#ffffff"),
    NodeState.SPLIT_BRAIN: (RED, "#000000", 4, "", "#ffffff"),
}
STATE_TEXT = {
    NodeState.ONLINE: ("● online", GREEN),
    NodeState.OFFLINE: ("● OFFLINE", RED),
    NodeState.UNKNOWN: ("● not checked", GREY),
    NodeState.FENCED: ("● fenced", "#ffffff"),
    # With "PRIMARY" beside it and "SPLIT-BRAIN" under it.
    NodeState.SPLIT_BRAIN: ("● ONLINE", "#ffffff"),
}
# (colour, width, dash) per edge kind.
EDGE_STYLES = {
    EdgeKind.STREAMING: (GREEN, 2, ""),
    EdgeKind.LAGGING: (ORANGE, 3, ""),
    EdgeKind.NOT_STREAMING: (RED, 2.5, "8 5"),
    EdgeKind.UPSTREAM_GONE: (RED, 2.5, "8 5"),
    EdgeKind.WRONG_UPSTREAM: (RED, 2.5, "2 4"),
    EdgeKind.REPLICA_OFFLINE: (RED, 2.5, "8 5"),
    EdgeKind.UNKNOWN: (GREY, 2, "4 4"),
    EdgeKind.LOOP: (RED, 3, "8 5"),
}


_n, _e = svg_number, svg_text


def fit(text: str, chars: int) -> str:
    """`text` cut to `chars` characters, the cut marked with an ellipsis."""
    return text if len(text) <= chars else text[: max(chars - 1, 0)] + "…"


def safe_id(value: object) -> str:
    """An id prefix made of letters, digits, - and _ only (it lands in url(#…))."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(value))[:40] or "t"


def lag_line(placed: Placed) -> str:
    """A replica's lag, "lag 1.2 MB, 3 s"; "" for a primary (it has none)."""
    node = placed.node
    if node.role == Role.PRIMARY:
        return ""
    lag = []
    if node.lag_bytes is not None:
        lag.append(format_bytes(node.lag_bytes))
    if node.lag_seconds is not None:
        lag.append(format_seconds(node.lag_seconds))
    return "lag " + (", ".join(lag) or "?")


def role_line(placed: Placed) -> str:
    """The role, timeline and where it is: "replica · timeline 2 · in dr"."""
    node = placed.node
    role = {Role.PRIMARY: "PRIMARY", Role.REPLICA: "replica"}.get(node.role, "role unknown")
    timeline = f"timeline {node.timeline}" if node.timeline is not None else "timeline ?"
    facts = [f for f in placed.facts if not f.startswith("DR copy")]
    return " · ".join([role, timeline, *facts])


def alarm_lines(placed: Placed, width: int) -> tuple[str, str]:
    """The alarms on two lines at most, whole alarms kept together where they fit."""
    lines: list[str] = []
    for alarm in placed.alarms:
        if lines and len(lines[-1]) + 3 + len(alarm) <= width:
            lines[-1] += " · " + alarm
        else:
            lines.append(alarm)
    if len(lines) > 2:
        lines[1] = " · ".join(lines[1:])
    first, second = (lines + ["", ""])[:2]
    return fit(first, width), fit(second, width)


def tooltip(placed: Placed) -> str:
    node = placed.node
    lines = [node.address, role_line(placed), STATE_TEXT[placed.state][0].lstrip("● ")]
    lines += [line for line in (lag_line(placed), *placed.facts, *placed.alarms) if line]
    if node.last_error:
        lines.append(fit(node.last_error, 300))
    return "\n".join(lines)


def _defs(prefix: str) -> str:
    markers = "".join(
        f'<marker id="{prefix}-arrow-{kind.value}" viewBox="0 0 10 10" refX="9" refY="5" '
        f'markerUnits="userSpaceOnUse" markerWidth="11" markerHeight="11" '
        f'orient="auto-start-reverse">'
        f'<path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
        for kind, (colour, _width, _dash) in EDGE_STYLES.items()
    )
    hatch = (
        f'<pattern id="{prefix}-hatch" width="10" height="10" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="4" height="10" fill="#555"/></pattern>'
    )
    return f"<defs>{markers}{hatch}</defs>"


@dataclass
class _Label:
    x: float
    y: float
    colour: str
    lines: tuple[str, ...]

    @property
    def height(self) -> float:
        return 13.0 * len(self.lines)


def _labels_apart(labels: list[_Label]) -> None:
    """Move labels down until none overlaps the one above it in the same column gap
    (several broken edges leave one upstream close together)."""
    placed: list[_Label] = []
    for label in sorted(labels, key=lambda item: (item.x, item.y)):
        for other in placed:
            if abs(other.x - label.x) < 70 and label.y < other.y + other.height + 2:
                label.y = other.y + other.height + 2
        placed.append(label)


def _label_svg(label: _Label) -> str:
    first, *rest = label.lines
    text = (
        f'<text x="{_n(label.x)}" y="{_n(label.y + 10)}" text-anchor="middle" font-size="11" '
        f'font-weight="bold" fill="{label.colour}" stroke="#ffffff" stroke-width="4" '
        f'paint-order="stroke">{_e(first)}'
    )
    for line in rest:
        text += f'<tspan x="{_n(label.x)}" dy="13">{_e(line)}</tspan>'
    return f'<g class="edge-label">{text}</text></g>'


def _edge(layout: Layout, edge: Edge, prefix: str) -> tuple[str, _Label | None]:
    """(the edge, its label): labels are drawn after the nodes, so that none hides one."""
    width_, height_ = layout.geometry.node_width, layout.geometry.node_height
    source, target = layout.placed(edge.source), layout.placed(edge.target)
    colour, width, dash = EDGE_STYLES[edge.kind]
    if edge.back:
        # Around, under the nodes: from the upstream's bottom to the replica's bottom.
        below = layout.height - MARGIN - 6
        x1, y1 = source.x + width_ * 0.62, source.y + height_
        x2, y2 = target.x + width_ * 0.38, target.y + height_ + 2
        c1, c2 = (x1, below), (x2, below)
    else:
        x1, y1 = source.x + width_, source.y + height_ / 2
        x2, y2 = target.x - 2, target.y + height_ / 2
        bend = (x2 - x1) / 2
        c1, c2 = (x1 + bend, y1), (x2 - bend, y2)
    path = f"M{_n(x1)},{_n(y1)} C{_n(c1[0])},{_n(c1[1])} {_n(c2[0])},{_n(c2[1])} {_n(x2)},{_n(y2)}"
    dashing = f' stroke-dasharray="{dash}"' if dash else ""
    words = " ".join(w for w in edge.label if w) or "streaming"
    line = (
        f'<g class="edge edge-{edge.kind.value}" data-source="{edge.source}" '
        f'data-target="{edge.target}"><title>{_e(words)}</title>'
        f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="{_n(width)}"'
        f'{dashing} marker-end="url(#{prefix}-arrow-{edge.kind.value})"/></g>'
    )
    first, second = edge.label
    if not first:
        return line, None
    # Between two compact columns there is room for one word (the line's style and the
    # tooltip say the rest).
    lines = (first,) if layout.geometry.compact or not second else (first, second)
    # The middle of the curve (a cubic Bézier at t = 0.5), text haloed in white.
    mx = (x1 + 3 * c1[0] + 3 * c2[0] + x2) / 8
    my = (y1 + 3 * c1[1] + 3 * c2[1] + y2) / 8
    return line, _Label(mx, my - 6.5 * len(lines) - 2, colour, lines)


def _line_chars(geometry: Geometry) -> int:
    """Characters of a node's text line (11 or 12 px) that fit before "…"."""
    per_char = 6.1 if geometry.compact else 6.7
    return max(int((geometry.node_width - 20) / per_char), 8)


def _tag_width(geometry: Geometry) -> int:
    return 38 if geometry.compact else 46


@dataclass(frozen=True)
class _Line:
    """One line of a node: its baseline below the node's top, size, weight, colour, and
    text; with `state`, the node's state in its own colour comes first."""

    dy: int
    size: int
    weight: str
    colour: str
    text: str
    state: bool = False


def _lines(placed: Placed, geometry: Geometry, ink: str, dark: bool) -> list[_Line]:
    """Full: address; role, timeline, site; state and lag; alarms on two lines. Compact:
    address; state and role; lag and timeline; alarms on one line."""
    node = placed.node
    alarm_colour = ON_DARK_ALARM if dark else RED
    chars = _line_chars(geometry)
    room = geometry.node_width - 20 - (_tag_width(geometry) + 6 if node.dr_priority else 0)
    address_chars = max(int(room / 8), 6)
    state_chars = chars - len(STATE_TEXT[placed.state][0])
    if geometry.compact:
        role = {Role.PRIMARY: "PRIMARY", Role.REPLICA: "replica"}.get(node.role, "role ?")
        timeline = f"TL {node.timeline}" if node.timeline is not None else "TL ?"
        first_alarm, _ = alarm_lines(placed, chars - 3)
        return [
            _Line(17, 12, "bold", ink, fit(node.address, address_chars)),
            _Line(33, 11, "normal", ink, fit(f" · {role}", state_chars), state=True),
            _Line(49, 11, "normal", ink, fit(_join(lag_line(placed), timeline), chars)),
            _Line(65, 11, "bold", alarm_colour, first_alarm),
        ]
    first_alarm, second_alarm = alarm_lines(placed, chars - 3)
    lag = lag_line(placed)
    return [
        _Line(18, 13, "bold", ink, fit(node.address, address_chars)),
        _Line(35, 12, "normal", ink, fit(role_line(placed), chars)),
        _Line(52, 12, "normal", ink, fit(f" · {lag}", state_chars) if lag else "", state=True),
        _Line(69, 12, "bold", alarm_colour, first_alarm),
        _Line(85, 12, "bold", alarm_colour, second_alarm),
    ]


def _join(*parts: str) -> str:
    return " · ".join(part for part in parts if part)


def _node(placed: Placed, geometry: Geometry, prefix: str) -> str:
    node = placed.node
    fill, stroke, width, dash, ink = NODE_STYLES[placed.state]
    x, y = placed.x, placed.y
    w, h = geometry.node_width, geometry.node_height
    dark = placed.state in (NodeState.FENCED, NodeState.SPLIT_BRAIN)
    parts = [
        f'<rect x="{_n(x)}" y="{_n(y)}" width="{w}" height="{h}" rx="5" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="{_n(width)}"'
        + (f' stroke-dasharray="{dash}"' if dash else "")
        + "/>"
    ]
    if placed.state == NodeState.FENCED:
        parts.append(
            f'<rect x="{_n(x)}" y="{_n(y)}" width="{w}" height="{h}" '
            f'rx="5" fill="url(#{prefix}-hatch)" opacity="0.55"/>'
        )
    if node.role == Role.PRIMARY:
        parts.append(
            f'<rect x="{_n(x)}" y="{_n(y)}" width="7" height="{h}" rx="2" fill="{PRIMARY_BLUE}"/>'
        )
    if node.dr_priority is not None:
        # The acknowledged DR copy, with its failover priority.
        tag, tag_width = fit(f"DR #{node.dr_priority}", 7), _tag_width(geometry)
        parts.append(
            f'<rect x="{_n(x + w - tag_width - 6)}" y="{_n(y + 5)}" width="{tag_width}" '
            f'height="16" rx="3" fill="{DR_TEAL}"/><text x="{_n(x + w - 6 - tag_width / 2)}" '
            f'y="{_n(y + 17)}" text-anchor="middle" font-size="{10 if geometry.compact else 11}" '
            f'font-weight="bold" fill="#ffffff">{_e(tag)}</text>'
        )
    left = x + 14
    state_text, state_colour = STATE_TEXT[placed.state]
    for line in _lines(placed, geometry, ink, dark):
        at = f'x="{_n(left)}" y="{_n(y + line.dy)}" font-size="{line.size}"'
        if line.state:
            parts.append(
                f'<text {at} fill="{ink}"><tspan fill="{state_colour}" font-weight="bold">'
                f"{_e(state_text)}</tspan>{_e(line.text)}</text>"
            )
        elif line.text:
            parts.append(
                f'<text {at} font-weight="{line.weight}" fill="{line.colour}">'
                f"{_e(line.text)}</text>"
            )
    body = "".join(parts)
    group = (
        f'<g class="node node-{placed.state.value}" data-key="{node.key}">'
        f"<title>{_e(tooltip(placed))}</title>{body}</g>"
    )
    if node.url:
        return f'<a href="{_e(node.url)}">{group}</a>'
    return group


def render(layout: Layout, *, title: str, id_prefix: object = "t") -> str:
    """The layout as one <svg> element; `id_prefix` keeps marker ids apart when several
    pictures share a page."""
    prefix = safe_id(id_prefix)
    width, height = _n(layout.width), _n(layout.height)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="herd-topology" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(title)}" font-family="{_e(FONT)}" font-size="12">'
        f"<title>{_e(title)}</title>",
        _defs(prefix),
    ]
    if layout.banner:
        parts.append(
            f'<g class="banner"><rect x="{MARGIN}" y="4" width="{_n(layout.width - 2 * MARGIN)}"'
            f' height="22" rx="3" fill="{RED}"/><text x="{MARGIN + 8}" y="20" font-size="13" '
            f'font-weight="bold" fill="#ffffff">'
            f"{_e(fit(layout.banner, int((layout.width - 2 * MARGIN - 16) / 8)))}</text></g>"
        )
    if not layout.nodes:
        parts.append(
            f'<text x="{MARGIN}" y="{_n(layout.height / 2 + 4)}" fill="{GREY}">'
            "No instance recorded.</text>"
        )
    edges = [_edge(layout, edge, prefix) for edge in layout.edges]
    labels = [label for _line, label in edges if label is not None]
    _labels_apart(labels)
    parts += [line for line, _label in edges]
    parts += [_node(placed, layout.geometry, prefix) for placed in layout.nodes]
    parts += [_label_svg(label) for label in labels]
    parts.append("</svg>")
    return "".join(parts)
