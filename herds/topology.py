"""A herd's replication topology as positions and edges. Pure: plain values in, plain out.

The pages (herds/admin/topology.py) read the inventory and hand each herd's instances
here as `Node`s; `layout()` places them left to right, upstream before downstream (the
primary in the first column, its replicas in the second, cascading replicas further
right, each subtree kept together), classifies every node and every replication edge,
and says what is wrong in words. herds/topology_svg.py draws the result.

It is built for the inventory as it is, not as it should be: two primaries (a split
brain), a replica whose upstream is missing or in another herd, an upstream loop, a
replica that is its own upstream, duplicate keys. Every node given is placed exactly once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace

from instances.choices import ReplicationHealth, Role
from instances.health_rules import replication_health

# Between two trees of one herd (two primaries, a replica whose upstream is missing).
TREE_GAP = 14
MARGIN = 12
BANNER_HEIGHT = 30
# Room under the nodes for the edges that go back left (upstream loops).
LOOP_ROOM = 44


@dataclass(frozen=True)
class Geometry:
    """Node sizes: the herd page draws every detail on roomy nodes; the fleet page draws
    the same facts (`compact`: shorter words, one line of alarms) on smaller ones, two
    herds side by side at 1366 px."""

    node_width: int
    node_height: int
    column_gap: int
    row_gap: int
    compact: bool = False


FULL = Geometry(node_width=228, node_height=94, column_gap=100, row_gap=16)
COMPACT = Geometry(node_width=186, node_height=76, column_gap=64, row_gap=12, compact=True)


class NodeState(enum.StrEnum):
    """How a node is drawn, worst first."""

    # A primary that answers while another does too, or while it is fenced: it takes
    # writes that the herd's real primary does not see.
    SPLIT_BRAIN = "split_brain"
    FENCED = "fenced"
    OFFLINE = "offline"
    UNKNOWN = "unknown"
    ONLINE = "online"


class EdgeKind(enum.StrEnum):
    """How a replication edge (upstream → replica) is drawn."""

    STREAMING = "streaming"
    LAGGING = "lagging"
    NOT_STREAMING = "not_streaming"
    UPSTREAM_GONE = "upstream_gone"
    WRONG_UPSTREAM = "wrong_upstream"
    # The replica itself does not answer: nothing streams to it.
    REPLICA_OFFLINE = "replica_offline"
    UNKNOWN = "unknown"
    # The upstream links go round in a circle: nothing in it can receive WAL.
    LOOP = "loop"

    @property
    def broken(self) -> bool:
        return self in (
            EdgeKind.NOT_STREAMING,
            EdgeKind.UPSTREAM_GONE,
            EdgeKind.WRONG_UPSTREAM,
            EdgeKind.REPLICA_OFFLINE,
            EdgeKind.LOOP,
        )


# What an edge says, in two short lines that fit between two columns.
EDGE_LABELS = {
    EdgeKind.STREAMING: ("", ""),
    EdgeKind.LAGGING: ("lagging", ""),
    EdgeKind.NOT_STREAMING: ("broken", "not streaming"),
    EdgeKind.UPSTREAM_GONE: ("broken", "upstream down"),
    EdgeKind.WRONG_UPSTREAM: ("wrong", "upstream"),
    EdgeKind.REPLICA_OFFLINE: ("broken", "replica down"),
    EdgeKind.UNKNOWN: ("unknown", ""),
    EdgeKind.LOOP: ("loop", ""),
}

_EDGE_OF = {
    ReplicationHealth.STREAMING: EdgeKind.STREAMING,
    ReplicationHealth.LAGGING: EdgeKind.LAGGING,
    ReplicationHealth.NOT_STREAMING: EdgeKind.NOT_STREAMING,
    ReplicationHealth.UPSTREAM_GONE: EdgeKind.UPSTREAM_GONE,
    ReplicationHealth.UPSTREAM_WRONG: EdgeKind.WRONG_UPSTREAM,
    ReplicationHealth.UNKNOWN: EdgeKind.UNKNOWN,
}


@dataclass(frozen=True)
class Node:
    """One instance as the inventory records it; `upstream` is another node's key."""

    key: int
    server: str
    port: int
    role: str = Role.UNKNOWN
    online: bool | None = None
    upstream: int | None = None
    upstream_streaming: bool | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    timeline: int | None = None
    fenced: bool = False
    fence_confirmed: bool = False
    needs_remaster: bool = False
    needs_rebuild: bool = False
    rebuild_incomplete: bool = False
    # The acknowledged DR copy's priority (None: not a DR candidate).
    dr_priority: int | None = None
    # The server's environment, shown when it differs from the herd's (a DR site).
    environment: str = ""
    last_error: str = ""
    url: str = ""

    @property
    def address(self) -> str:
        return f"{self.server}:{self.port}"


@dataclass(frozen=True)
class Placed:
    node: Node
    x: float
    y: float
    column: int
    state: NodeState
    # What is wrong with it, most important first ("FENCED: not confirmed").
    alarms: tuple[str, ...] = ()
    # What is special about it without being wrong ("DR copy #1", "in dr").
    facts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edge:
    source: int
    target: int
    kind: EdgeKind
    label: tuple[str, str]
    # True when the target is not right of the source (a loop): drawn around, below.
    back: bool = False


@dataclass(frozen=True)
class Layout:
    nodes: tuple[Placed, ...]
    edges: tuple[Edge, ...]
    width: float
    height: float
    geometry: Geometry = FULL
    split_brain: bool = False
    # One sentence per problem of the whole herd, for the page around the picture.
    problems: tuple[str, ...] = field(default_factory=tuple)
    # The picture's own alarm line ("" for none): short, it must fit one column.
    banner: str = ""

    @cached_property
    def _by_key(self) -> dict[int, Placed]:
        return {placed.node.key: placed for placed in self.nodes}

    def placed(self, key: int) -> Placed:
        return self._by_key[key]


def _unique(nodes: Iterable[Node]) -> list[Node]:
    seen: set[int] = set()
    unique = []
    for node in nodes:
        if node.key not in seen:
            seen.add(node.key)
            unique.append(node)
    return unique


def _order(node: Node) -> tuple:
    # Primaries first (the one that answers first), DR copies last, then by address.
    return (
        node.role != Role.PRIMARY,
        node.online is not True,
        node.dr_priority is not None,
        node.dr_priority or 0,
        node.server,
        node.port,
        node.key,
    )


def _loop_members(by_key: dict[int, Node]) -> set[int]:
    """Keys on an upstream loop (including a node that is its own upstream)."""
    on_loop: set[int] = set()
    done: set[int] = set()
    for start in by_key:
        path: list[int] = []
        index: dict[int, int] = {}
        key: int | None = start
        while key is not None and key in by_key and key not in done and key not in index:
            index[key] = len(path)
            path.append(key)
            key = by_key[key].upstream
        if key is not None and key in index:
            on_loop.update(path[index[key] :])
        done.update(path)
    return on_loop


def _timeline_flag(node: Node, upstream: Node | None) -> str:
    if upstream is None or node.timeline is None or upstream.timeline is None:
        return ""
    if node.timeline != upstream.timeline:
        return f"timeline {node.timeline}, upstream on {upstream.timeline}"
    return ""


def _state(node: Node, online_primaries: int) -> NodeState:
    if node.role == Role.PRIMARY and node.online is True and (node.fenced or online_primaries > 1):
        return NodeState.SPLIT_BRAIN
    if node.fenced:
        return NodeState.FENCED
    if node.online is False:
        return NodeState.OFFLINE
    if node.online is None:
        return NodeState.UNKNOWN
    return NodeState.ONLINE


def _flags(
    node: Node,
    state: NodeState,
    by_key: dict[int, Node],
    on_loop: set[int],
    herd_environment: str,
) -> tuple[list[str], list[str]]:
    alarms: list[str] = []
    facts: list[str] = []
    if state == NodeState.SPLIT_BRAIN:
        alarms.append("SPLIT-BRAIN")
    if node.fenced:
        alarms.append("FENCED" if node.fence_confirmed else "FENCED: unconfirmed")
    if node.rebuild_incomplete:
        alarms.append("rebuild incomplete")
    elif node.needs_rebuild:
        alarms.append("needs rebuild")
    if node.key in on_loop:
        alarms.append("upstream loop")
    elif node.upstream is not None and node.upstream not in by_key:
        alarms.append("upstream not in this herd")
    elif node.upstream is None and node.role == Role.REPLICA:
        alarms.append("upstream not recorded")
    if node.needs_remaster:
        alarms.append("needs remaster")
    timeline = _timeline_flag(node, by_key.get(node.upstream) if node.upstream else None)
    if timeline:
        alarms.append(timeline)
    if node.dr_priority is not None:
        facts.append(f"DR copy #{node.dr_priority}")
    if node.environment and herd_environment and node.environment != herd_environment:
        facts.append(f"in {node.environment}")
    return alarms, facts


def _edge_kind(node: Node, upstream: Node, on_loop: set[int]) -> EdgeKind:
    if node.key in on_loop:
        return EdgeKind.LOOP
    # The same classification as the instance list's replication badge, read from the
    # same fields: a picture that disagreed with the list would be believed by nobody.
    recorded = SimpleNamespace(
        role=Role.REPLICA if node.role == Role.UNKNOWN else node.role,
        upstream_id=node.upstream,
        upstream=SimpleNamespace(fenced=upstream.fenced, online=upstream.online),
        needs_remaster=node.needs_remaster,
        online=node.online,
        upstream_streaming=node.upstream_streaming,
        lag_bytes=node.lag_bytes,
        lag_seconds=node.lag_seconds,
    )
    health = replication_health(recorded)
    # The list calls an offline replica's replication "unknown" (nothing was measured); a
    # picture of it must not look like a line that may be fine.
    if health == ReplicationHealth.UNKNOWN and node.online is False:
        return EdgeKind.REPLICA_OFFLINE
    return _EDGE_OF[health] if health is not None else EdgeKind.UNKNOWN


def layout(nodes: Sequence[Node], herd_environment: str = "", geometry: Geometry = FULL) -> Layout:
    """Place a herd's nodes and classify them and their edges (see the module docstring)."""
    node_width, node_height = geometry.node_width, geometry.node_height
    column_gap, row_gap = geometry.column_gap, geometry.row_gap
    unique = _unique(nodes)
    by_key = {node.key: node for node in unique}
    on_loop = _loop_members(by_key)
    online_primaries = sum(1 for n in unique if n.role == Role.PRIMARY and n.online is True)
    children: dict[int, list[Node]] = {key: [] for key in by_key}
    for node in unique:
        if node.upstream in by_key and node.upstream != node.key:
            children[node.upstream].append(node)
    for kids in children.values():
        kids.sort(key=_order)

    # Roots: what has no upstream in this herd; then, for each loop left unplaced, the
    # first of its members, so that the loop hangs from one of its own.
    roots = sorted(
        (n for n in unique if n.upstream not in by_key or n.upstream == n.key), key=_order
    )
    column: dict[int, int] = {}
    row: dict[int, float] = {}
    next_row = 0.0
    trees = 0

    def place(root: Node) -> None:
        """Depth first, without recursion (a hostile chain may be deeper than Python's
        recursion limit): leaves take rows in turn, a parent sits level with the middle of
        its children."""
        nonlocal next_row
        column[root.key] = 0
        tree: dict[int, list[Node]] = {}
        preorder: list[Node] = []
        stack = [root]
        while stack:
            node = stack.pop()
            preorder.append(node)
            # A node already placed (the root of its own loop) is not claimed twice.
            kids = [kid for kid in children[node.key] if kid.key not in column]
            for kid in kids:
                column[kid.key] = column[node.key] + 1
            tree[node.key] = kids
            stack.extend(reversed(kids))
        for node in preorder:
            if not tree[node.key]:
                row[node.key] = next_row
                next_row += 1
        for node in reversed(preorder):
            kids = tree[node.key]
            if kids:
                row[node.key] = (row[kids[0].key] + row[kids[-1].key]) / 2

    for root in roots:
        if root.key not in column:
            if trees:
                next_row += TREE_GAP / (node_height + row_gap)
            place(root)
            trees += 1
    # Whatever is left hangs from a loop: start each loop at its first member.
    while len(column) < len(by_key):
        pending = [by_key[k] for k in on_loop if k not in column]
        start = min(pending or [n for n in unique if n.key not in column], key=_order)
        if trees:
            next_row += TREE_GAP / (node_height + row_gap)
        place(start)
        trees += 1

    split_brain = online_primaries > 1 or any(
        n.fenced and n.online is True and n.role == Role.PRIMARY for n in unique
    )
    top = MARGIN + (BANNER_HEIGHT if split_brain else 0)
    placed: list[Placed] = []
    for node in sorted(unique, key=lambda n: (row[n.key], column[n.key])):
        state = _state(node, online_primaries)
        alarms, facts = _flags(node, state, by_key, on_loop, herd_environment)
        placed.append(
            Placed(
                node=node,
                x=MARGIN + column[node.key] * (node_width + column_gap),
                y=top + row[node.key] * (node_height + row_gap),
                column=column[node.key],
                state=state,
                alarms=tuple(alarms),
                facts=tuple(facts),
            )
        )

    edges: list[Edge] = []
    for node in unique:
        upstream = by_key.get(node.upstream) if node.upstream is not None else None
        if upstream is None:
            continue
        kind = _edge_kind(node, upstream, on_loop)
        back = column[node.key] <= column[upstream.key]
        edges.append(Edge(upstream.key, node.key, kind, EDGE_LABELS[kind], back))

    columns = max(column.values(), default=-1) + 1
    width = 2 * MARGIN + max(columns, 1) * node_width + max(columns - 1, 0) * column_gap
    if split_brain:
        # Room for the banner's words even above a single column.
        width = max(width, 2 * MARGIN + 240)
    bottom = max((p.y + node_height for p in placed), default=top + node_height / 2)
    height = bottom + MARGIN + (LOOP_ROOM if any(e.back for e in edges) else 0)
    banner = ""
    if online_primaries > 1:
        banner = f"SPLIT-BRAIN: {online_primaries} primaries"
    elif split_brain:
        banner = "SPLIT-BRAIN: fenced, answers"
    return Layout(
        nodes=tuple(placed),
        edges=tuple(edges),
        width=width,
        height=height,
        geometry=geometry,
        split_brain=split_brain,
        problems=tuple(_problems(unique, online_primaries, on_loop, by_key)),
        banner=banner,
    )


def _problems(
    nodes: list[Node], online_primaries: int, on_loop: set[int], by_key: dict[int, Node]
) -> list[str]:
    problems = []
    primaries = [n for n in nodes if n.role == Role.PRIMARY]
    if online_primaries > 1:
        problems.append(f"SPLIT-BRAIN: {online_primaries} primaries answer")
    for node in nodes:
        if node.fenced and node.online is True and node.role == Role.PRIMARY:
            problems.append(f"SPLIT-BRAIN: fenced {node.address} answers as a primary")
    if nodes and not primaries:
        problems.append("no primary recorded")
    elif primaries and online_primaries == 0 and any(n.online is not None for n in primaries):
        problems.append("no primary online")
    if on_loop:
        problems.append(f"{len(on_loop)} instance(s) in an upstream loop")
    missing = [n for n in nodes if n.upstream is not None and n.upstream not in by_key]
    if missing:
        problems.append(f"{len(missing)} replica(s) whose upstream is not in this herd")
    return problems
