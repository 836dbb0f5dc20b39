"""Charts drawn as SVG on the server: no script, nothing fetched from elsewhere, readable by a
screen reader (role="img", a <title> and a <desc> naming every value), and drawn from integer
minutes (floats only for pixel positions). Our own rather than pygal's: pygal's SVG needs its
script for tooltips, has no role or aria-labelledby, and puts inline styles the pages'
Content-Security-Policy refuses."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Narrow enough that its 14px text is still about 12px on a 360px-wide phone.
WIDTH = 440
ROW_HEIGHT = 34
LABEL_WIDTH = 140
LABEL_CHARS = 18
MARGIN = 12
LINE_HEIGHT = 300
# Series colours come from the stylesheet (.series-0 ... .series-5), so contrast is set once.
SERIES_CLASSES = 6

_ids = itertools.count(1)


def hours_text(minutes: int) -> str:
    """Integer minutes as people read them: -90 -> "-1h 30m"."""
    sign = "-" if minutes < 0 else ""
    h, m = divmod(abs(minutes), 60)
    return f"{sign}{h}h {m:02d}m"


def _chart_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def _svg_open(chart_id: str, width: int, height: int, title: str, desc: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{chart_id}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" preserveAspectRatio="xMinYMin meet">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(desc)}</desc>'
    )


def _short(label: str) -> str:
    """A label that fits beside its bar; the chart's description has it in full."""
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def bar_chart(
    title: str,
    values: Mapping[str, int],
    *,
    unit: Callable[[int], str] = hours_text,
) -> Markup:
    """Horizontal bars from a zero line: positive values to the right, negative to the left
    (what a bank is owed, and what it owes). Each bar is labelled with its value."""
    chart_id = _chart_id("bar")
    items = list(values.items())
    desc = "; ".join(f"{label}: {unit(v)}" for label, v in items) or "no values"
    height = MARGIN * 2 + ROW_HEIGHT * max(1, len(items)) + 20
    parts = [_svg_open(chart_id, WIDTH, height, title, desc)]
    plot_left, plot_right = LABEL_WIDTH, WIDTH - MARGIN
    largest = max((abs(v) for _, v in items), default=0) or 1
    has_negative = any(v < 0 for _, v in items)
    zero = (plot_left + plot_right) / 2 if has_negative else plot_left + 70.0
    span = (plot_right - zero - 70) if not has_negative else (plot_right - plot_left) / 2 - 70
    for row, (label, value) in enumerate(items):
        y = MARGIN + row * ROW_HEIGHT
        length = span * abs(value) / largest
        x = zero if value >= 0 else zero - length
        kind = "positive" if value >= 0 else "negative"
        text_x = zero + length + 6 if value >= 0 else zero - length - 6
        anchor = "start" if value >= 0 else "end"
        parts.append(
            f'<g class="bar {kind}">'
            f'<text class="label" x="{LABEL_WIDTH - 8}" y="{_fmt(y + 21)}" '
            f'text-anchor="end">{escape(_short(label))}</text>'
            f'<rect x="{_fmt(x)}" y="{_fmt(y + 5)}" width="{_fmt(max(length, 1.0))}" '
            f'height="{ROW_HEIGHT - 10}"><title>{escape(label)}: {escape(unit(value))}</title>'
            "</rect>"
            f'<text class="value" x="{_fmt(text_x)}" y="{_fmt(y + 21)}" '
            f'text-anchor="{anchor}">{escape(unit(value))}</text></g>'
        )
    bottom = MARGIN + ROW_HEIGHT * max(1, len(items))
    parts.append(
        f'<line class="axis" x1="{_fmt(zero)}" y1="{MARGIN}" x2="{_fmt(zero)}" y2="{bottom}"/>'
        f'<text class="axis-label" x="{_fmt(zero)}" y="{bottom + 16}" text-anchor="middle">0</text>'
        "</svg>"
    )
    return Markup("".join(parts))  # noqa: S704 (every value in it was escaped)


@dataclass(frozen=True)
class Series:
    """One line: its name and a value at each of the chart's points."""

    name: str
    values: Sequence[int]


def _scale(low: int, high: int, top: float, bottom: float) -> Callable[[int], float]:
    if high == low:
        high, low = high + 1, low - 1
    return lambda v: bottom - (v - low) * (bottom - top) / (high - low)


def line_chart(
    title: str,
    x_labels: Sequence[str],
    series: Sequence[Series],
    *,
    x_title: str = "",
    y_label: str = "",
    unit: Callable[[int], str] = hours_text,
) -> Markup:
    """One line per series across ``x_labels``, with the y axis's lowest, zero and highest
    values labelled (and ``y_label`` beside it), the x axis's labels and ``x_title`` under it,
    and a legend."""
    chart_id = _chart_id("line")
    desc = "; ".join(
        f"{s.name}: "
        + ", ".join(f"{x} {unit(v)}" for x, v in zip(x_labels, s.values, strict=False))
        for s in series
    )
    legend_height = 22 * len(series) + 14
    height = LINE_HEIGHT + legend_height
    parts = [_svg_open(chart_id, WIDTH, height, title, desc or "no values")]
    left, right, top, bottom = 110.0, WIDTH - 20.0, 16.0, LINE_HEIGHT - 50.0
    values = [v for s in series for v in s.values] or [0]
    low, high = min(0, *values), max(0, *values)
    y_of = _scale(low, high, top, bottom)
    steps = max(1, len(x_labels) - 1)

    def x_of(i: int) -> float:
        return left + (right - left) * i / steps if len(x_labels) > 1 else (left + right) / 2

    parts.append(
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/>'
        f'<line class="axis" x1="{left}" y1="{_fmt(y_of(0))}" x2="{right}" y2="{_fmt(y_of(0))}"/>'
    )
    for tick in sorted({low, 0, high}):
        parts.append(
            f'<text class="axis-label" x="{left - 8}" y="{_fmt(y_of(tick) + 4)}" '
            f'text-anchor="end">{escape(unit(tick))}</text>'
        )
    for i, label in enumerate(x_labels):
        parts.append(
            f'<text class="axis-label" x="{_fmt(x_of(i))}" y="{bottom + 26}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append(
        f'<text class="axis-title" x="{(left + right) / 2}" y="{bottom + 46}" '
        f'text-anchor="middle">{escape(x_title)}</text>'
    )
    if y_label:
        middle = _fmt((top + bottom) / 2)
        parts.append(
            f'<text class="axis-title" x="16" y="{middle}" text-anchor="middle" '
            f'transform="rotate(-90 16 {middle})">{escape(y_label)}</text>'
        )
    for n, line in enumerate(series):
        parts.append(_series(n, line, x_of, y_of, x_labels, unit, LINE_HEIGHT + 14 + 22 * n))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every value in it was escaped)


def _series(
    n: int,
    line: Series,
    x_of: Callable[[int], float],
    y_of: Callable[[int], float],
    x_labels: Sequence[str],
    unit: Callable[[int], str],
    legend_y: float,
) -> str:
    points = [(x_of(i), y_of(v)) for i, v in enumerate(line.values)]
    css = f"series-{n % SERIES_CLASSES}"
    path = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)
    dots = "".join(
        f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="4"><title>{escape(line.name)}, '
        f"{escape(x_labels[i])}: {escape(unit(line.values[i]))}</title></circle>"
        for i, (x, y) in enumerate(points)
    )
    return (
        f'<g class="series {css}"><polyline points="{path}"/>{dots}'
        f'<rect x="110" y="{_fmt(legend_y - 10)}" width="14" height="14"/>'
        f'<text class="legend" x="132" y="{_fmt(legend_y + 2)}">{escape(line.name)}</text></g>'
    )
