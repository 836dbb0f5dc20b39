"""The dashboard's server-drawn SVG charts: what a screen reader is told, escaped labels, bars
on the side of zero their sign says."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from services.common.ui.charts import Series, bar_chart, hours_text, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def test_hours_text_reads_integer_minutes_as_hours_and_minutes() -> None:
    assert hours_text(0) == "0h 00m"
    assert hours_text(90) == "1h 30m"
    assert hours_text(-61) == "-1h 01m"


def test_a_bar_chart_names_every_value_for_a_screen_reader_and_escapes_labels() -> None:
    svg = str(bar_chart("Positions <now>", {"alpha": -90, "<beta>": 90}))
    root = ET.fromstring(svg)  # noqa: S314 (our own output); well-formed: every label escaped
    assert root.get("role") == "img"
    title_id, desc_id = str(root.get("aria-labelledby")).split()
    assert root.find(f"{SVG}title").get("id") == title_id  # type: ignore[union-attr]
    assert root.find(f"{SVG}title").text == "Positions <now>"  # type: ignore[union-attr]
    assert root.find(f"{SVG}desc").get("id") == desc_id  # type: ignore[union-attr]
    assert root.find(f"{SVG}desc").text == "alpha: -1h 30m; <beta>: 1h 30m"  # type: ignore[union-attr]
    assert "<beta>" not in svg
    # The negative bar ends at the zero line, the positive one starts there.
    rects = root.findall(f".//{SVG}rect")
    zero = float(root.find(f"{SVG}line").get("x1", ""))  # type: ignore[union-attr]
    negative, positive = ((float(r.get("x", "")), float(r.get("width", ""))) for r in rects)
    assert negative[0] + negative[1] == zero
    assert positive[0] == zero


def test_two_charts_on_one_page_have_different_ids() -> None:
    first = re.search(r'id="([^"]+)"', str(bar_chart("a", {"x": 1})))
    second = re.search(r'id="([^"]+)"', str(bar_chart("b", {"x": 1})))
    assert first
    assert second
    assert first.group(1) != second.group(1)


def test_a_line_chart_describes_each_series_at_each_point() -> None:
    svg = str(line_chart("Over time", ["01 Mar", "now"], [Series("alpha", [0, -60])]))
    root = ET.fromstring(svg)  # noqa: S314 (our own output)
    assert root.get("role") == "img"
    desc = root.find(f"{SVG}desc")
    assert desc is not None
    assert desc.text == "alpha: 01 Mar 0h 00m, now -1h 00m"
    assert len(root.findall(f".//{SVG}circle")) == 2
    assert "-1h 00m" in svg  # the lowest value labels the y axis
