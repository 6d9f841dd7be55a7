"""Topology pictures: one herd's (on its page, refreshed from its SVG URL) and every herd's.

The inventory is read in one query per page whatever the number of instances
(`nodes_by_herd`); the layout and the drawing are pure (herds.topology,
herds.topology_svg). Both views need the herd view permission, like the herd pages.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Exists, OuterRef, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.safestring import mark_safe

from herds import topology, topology_svg
from herds.models import Environment, Herd
from instances.admin.display import change_urls
from instances.models import Instance

# How often an open page fetches its picture again; the health sweep writes every
# HEALTH_INTERVAL (30 s by default), jobs at any moment.
REFRESH_SECONDS = 5
HERDS_PER_PAGE = 24
SVG_CONTENT_TYPE = "image/svg+xml; charset=utf-8"

_FIELDS = (
    "pk",
    "herd_id",
    "port",
    "role",
    "online",
    "upstream_id",
    "upstream_streaming",
    "lag_bytes",
    "lag_seconds",
    "timeline",
    "fenced",
    "fence_confirmed_at",
    "needs_remaster",
    "needs_rebuild",
    "rebuild_job",
    "last_error",
    "server__hostname",
    "server__environment__name",
    "dr_candidacy__priority",
)


def nodes_by_herd(herd_ids: Iterable[int]) -> dict[int, list[topology.Node]]:
    """Every instance of these herds as a topology node, in one query."""
    change_url = change_urls("admin:instances_instance_change")
    nodes: dict[int, list[topology.Node]] = {}
    rows = Instance.objects.filter(herd_id__in=list(herd_ids)).order_by("pk").values(*_FIELDS)
    for row in rows:
        nodes.setdefault(row["herd_id"], []).append(
            topology.Node(
                key=row["pk"],
                server=row["server__hostname"],
                port=row["port"],
                role=row["role"],
                online=row["online"],
                upstream=row["upstream_id"],
                upstream_streaming=row["upstream_streaming"],
                lag_bytes=row["lag_bytes"],
                lag_seconds=row["lag_seconds"],
                timeline=row["timeline"],
                fenced=row["fenced"],
                fence_confirmed=row["fence_confirmed_at"] is not None,
                needs_remaster=row["needs_remaster"],
                needs_rebuild=row["needs_rebuild"],
                rebuild_incomplete=row["rebuild_job"] is not None,
                dr_priority=row["dr_candidacy__priority"],
                environment=row["server__environment__name"] or "",
                last_error=row["last_error"],
                url=change_url(row["pk"]),
            )
        )
    return nodes


def herd_picture(
    herd: Herd, nodes: list[topology.Node], geometry: topology.Geometry = topology.FULL
) -> tuple[str, topology.Layout]:
    """(the SVG, its layout) of one herd; `herd` needs its environment selected."""
    placed = topology.layout(nodes, herd.environment.name, geometry)
    svg = topology_svg.render(
        placed, title=f"Replication topology of herd {herd.name}", id_prefix=f"h{herd.pk}"
    )
    return svg, placed


def herd_context(herd: Herd) -> dict:
    """What the herd's change page adds: its picture and the URL that refreshes it."""
    svg, placed = herd_picture(herd, nodes_by_herd([herd.pk]).get(herd.pk, []))
    return {
        # Built by topology_svg, which escapes every text it draws.
        "topology_svg": mark_safe(svg),  # noqa: S308
        "topology_problems": placed.problems,
        "topology_url": reverse("admin:herds_herd_topology_svg", args=[herd.pk]),
        "topology_fleet_url": reverse("admin:herds_herd_topology"),
        "topology_refresh": REFRESH_SECONDS,
    }


def herd_svg_view(
    model_admin: admin.ModelAdmin, request: HttpRequest, object_id: int
) -> HttpResponse:
    """The herd's picture alone, as image/svg+xml: what its page fetches to refresh."""
    herd = Herd.objects.select_related("environment").filter(pk=object_id).first()
    if herd is None:
        raise Http404("No such herd.")
    if not model_admin.has_view_permission(request, herd):
        raise PermissionDenied
    svg, _ = herd_picture(herd, nodes_by_herd([herd.pk]).get(herd.pk, []))
    response = HttpResponse(svg, content_type=SVG_CONTENT_TYPE)
    # Opened on its own, an SVG is a document: it may not load or run anything.
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return response


def fleet_view(model_admin: admin.ModelAdmin, request: HttpRequest) -> TemplateResponse:
    """Every herd's picture, a page of herds at a time, by environment then name;
    `?fragment=1` returns only the pictures (what the open page fetches to refresh)."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    herds = Herd.objects.select_related("environment").order_by("environment__name", "name")
    environment = request.GET.get("environment", "")
    if environment.isdigit():
        herds = herds.filter(environment_id=int(environment))
    query = request.GET.get("q", "").strip()
    if query:
        on_server = Instance.objects.filter(herd=OuterRef("pk"), server__hostname__icontains=query)
        herds = herds.filter(Q(name__icontains=query) | Exists(on_server))
    page = Paginator(herds, HERDS_PER_PAGE).get_page(request.GET.get("p"))
    nodes = nodes_by_herd(herd.pk for herd in page)
    cards = []
    for herd in page:
        svg, placed = herd_picture(herd, nodes.get(herd.pk, []), topology.COMPACT)
        cards.append(
            {
                "herd": herd,
                "url": reverse("admin:herds_herd_change", args=[herd.pk]),
                # Built by topology_svg, which escapes every text it draws.
                "svg": mark_safe(svg),  # noqa: S308
                "problems": placed.problems,
            }
        )
    context = {
        "cards": cards,
        "page": page,
        "query": query,
        "environment": environment,
    }
    if request.GET.get("fragment"):
        return TemplateResponse(request, "admin/herds/herd/topology_cards.html", context)
    params = request.GET.copy()
    params.pop("p", None)
    params.pop("fragment", None)
    fragment = params.copy()
    fragment.update({"fragment": "1", "p": str(page.number)})
    context.update(
        model_admin.admin_site.each_context(request),
        opts=Herd._meta,
        title="Replication topology of every herd",
        environments=list(Environment.objects.order_by("name").values_list("pk", "name")),
        page_query=params.urlencode(),
        fragment_url=f"{request.path}?{fragment.urlencode()}",
        refresh_seconds=REFRESH_SECONDS,
    )
    return TemplateResponse(request, "admin/herds/herd/topology.html", context)
