"""The fleet dashboard's small pictures as SVG: lag sparklines and stacked columns. Pure.

Plain numbers in, one <svg> element out, every text escaped here. No scripts, no
stylesheet (a <style> inside inline SVG would apply to the whole page), no external
resources: the pages work offline and the pictures print.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

FONT = "-apple-system, 'Segoe UI', system-ui, Roboto, 'Helvetica Neue', Arial, sans-serif"
GREEN = "#2e7d32"
ORANGE = "#b54300"
RED = "#ba2121"
GRID = "#999"


def svg_number(value: float) -> str:
    """A coordinate as SVG wants it: one decimal at most, "12" rather than "12.0"."""
    return f"{value:.1f}".removesuffix(".0")


# Characters XML 1.0 cannot carry even escaped: a standalone SVG with one does not parse.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def svg_text(text: object) -> str:
    """Any value as SVG text or attribute content: escaped (& < > " '), and what XML
    cannot carry at all replaced by U+FFFD. Every picture's every text goes through it."""
    return escape(_NOT_XML.sub("\ufffd", str(text)), quote=True)


_n, _e = svg_number, svg_text


@dataclass(frozen=True)
class Point:
    """One time bucket of one instance: when (seconds since the epoch), the worst lag
    measured in it (None: not measured, a gap), and whether it was seen offline."""

    at: float
    value: float | None
    offline: bool = False


def sparkline(
    points: Sequence[Point],
    *,
    start: float,
    end: float,
    top: float,
    threshold: float | None = None,
    title: str = "",
    width: int = 240,
    height: int = 34,
    gap: float | None = None,
) -> str:
    """A line of `points` between `start` and `end` (x) and 0 and `top` (y).

    The line breaks where a value is missing or where two points are more than `gap`
    seconds apart (no sweep ran): a gap is drawn as a gap, never as a zero. The line is
    orange when it crosses `threshold` (drawn dashed), green otherwise; buckets where the
    instance was seen offline get a red mark on the baseline.
    """
    pad = 2
    span = max(end - start, 1e-9)
    top = top if top and top > 0 else 1.0

    def x(at: float) -> float:
        return pad + (min(max(at, start), end) - start) / span * (width - 2 * pad)

    def y(value: float) -> float:
        return height - pad - min(max(value, 0.0), top) / top * (height - 2 * pad)

    ordered = sorted(points, key=lambda p: p.at)
    segments: list[list[tuple[float, float]]] = []
    previous: float | None = None
    for point in ordered:
        if point.value is None:
            previous = None
            continue
        if previous is None or (gap is not None and point.at - previous > gap):
            segments.append([])
        segments[-1].append((point.at, point.value))
        previous = point.at
    over = threshold is not None and any(
        p.value is not None and p.value > threshold for p in ordered
    )
    colour = ORANGE if over else GREEN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sparkline" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(title)}"><title>{_e(title)}</title>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>',
    ]
    if threshold is not None and 0 < threshold <= top:
        parts.append(
            f'<line x1="{pad}" y1="{_n(y(threshold))}" x2="{width - pad}" '
            f'y2="{_n(y(threshold))}" stroke="{GRID}" stroke-width="1" stroke-dasharray="3 3"/>'
        )
    for segment in segments:
        if len(segment) == 1:
            at, value = segment[0]
            parts.append(f'<circle cx="{_n(x(at))}" cy="{_n(y(value))}" r="1.8" fill="{colour}"/>')
            continue
        line = " ".join(f"{_n(x(at))},{_n(y(value))}" for at, value in segment)
        base = f"{_n(x(segment[-1][0]))},{height - pad} {_n(x(segment[0][0]))},{height - pad}"
        parts.append(f'<polygon points="{line} {base}" fill="{colour}" fill-opacity="0.15"/>')
        parts.append(
            f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="1.6" '
            'stroke-linejoin="round"/>'
        )
    step = (width - 2 * pad) / max(len(ordered), 1)
    for point in ordered:
        if point.offline:
            parts.append(
                f'<rect x="{_n(x(point.at) - 1)}" y="{height - 5}" '
                f'width="{_n(max(step, 2))}" height="4" fill="{RED}"/>'
            )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Column:
    """One stacked column: its axis label ("" for none), the link of the whole column, its
    tooltip, and its parts from the bottom up as (count, colour)."""

    label: str
    url: str
    title: str
    parts: tuple[tuple[int, str], ...]

    @property
    def total(self) -> int:
        return sum(count for count, _colour in self.parts)


def stacked_columns(
    columns: Sequence[Column], *, title: str = "", width: int = 720, height: int = 110
) -> str:
    """Columns side by side, each part's height proportional to its count, on one scale
    (the tallest column's total); each column links to `url`."""
    axis = 16
    top_room = 14
    chart = height - axis - top_room
    count = max(len(columns), 1)
    slot = width / count
    bar = max(slot - 3, 1)
    peak = max((c.total for c in columns), default=0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="stacked-columns" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(title)}" font-family="{_e(FONT)}" font-size="10">'
        f"<title>{_e(title)}</title>",
        f'<line x1="0" y1="{height - axis}" x2="{width}" y2="{height - axis}" '
        f'stroke="{GRID}" stroke-width="1"/>',
    ]
    for index, column in enumerate(columns):
        left = index * slot + 1.5
        bottom = height - axis
        pieces = []
        for amount, colour in column.parts:
            if amount <= 0 or peak <= 0:
                continue
            tall = max(amount / peak * chart, 2)
            bottom -= tall
            pieces.append(
                f'<rect x="{_n(left)}" y="{_n(bottom)}" width="{_n(bar)}" height="{_n(tall)}" '
                f'fill="{colour}"/>'
            )
        # A transparent full-height target, so that an empty hour is clickable too.
        target = (
            f'<rect x="{_n(left)}" y="0" width="{_n(bar)}" height="{height - axis}" '
            f'fill="#000" fill-opacity="0"/>'
        )
        total = (
            f'<text x="{_n(left + bar / 2)}" y="{_n(bottom - 3)}" text-anchor="middle" '
            f'fill="#333">{column.total}</text>'
            if column.total
            else ""
        )
        label = (
            f'<text x="{_n(left + bar / 2)}" y="{height - 4}" text-anchor="middle" '
            f'fill="#333">{_e(column.label)}</text>'
            if column.label
            else ""
        )
        body = f"<title>{_e(column.title)}</title>{target}{''.join(pieces)}{total}{label}"
        if column.url:
            parts.append(f'<a href="{_e(column.url)}">{body}</a>')
        else:
            parts.append(f"<g>{body}</g>")
    parts.append("</svg>")
    return "".join(parts)
