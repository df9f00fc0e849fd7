"""compose.plots: the Pareto frontier's law, and plots that are real, deterministic files."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given, settings
from hypothesis import strategies as st

from compose.plots import Point, pareto_front, plot_heatmap, plot_pareto, plot_spectra


def test_pareto_front_by_hand():
    pts = [Point("a", 1, 0.5), Point("b", 2, 0.4), Point("c", 3, 0.9), Point("d", 3, 0.8)]
    assert [p.label for p in pareto_front(pts, higher_is_better=True)] == ["a", "c"]
    # Lower is better (a loss): a is the cheapest, b costs more for a lower loss.
    assert [p.label for p in pareto_front(pts, higher_is_better=False)] == ["a", "b"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=15))
def test_pareto_front_is_exactly_the_undominated_points(coords):
    pts = [Point(str(i), x, y) for i, (x, y) in enumerate(coords)]
    front = pareto_front(pts, higher_is_better=True)
    for q in pts:
        dominated = any(
            p.x <= q.x and p.y >= q.y and (p.x < q.x or p.y > q.y) for p in pts if p is not q
        )
        assert (q in front) == (not dominated)
    assert [p.x for p in front] == sorted(p.x for p in front)


def test_plots_are_valid_and_deterministic(tmp_path):
    points = [Point("team/a", 1000, 0.7, 0.6, 0.8), Point("team/b", 4000, 0.75, 0.7, 0.8)]
    first = plot_pareto(points, tmp_path / "1" / "pareto", x_label="params", y_label="acc",
                        higher_is_better=True)  # fmt: skip
    second = plot_pareto(points, tmp_path / "2" / "pareto", x_label="params", y_label="acc",
                         higher_is_better=True)  # fmt: skip
    assert [p.name for p in first] == ["pareto.png", "pareto.svg"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()  # same inputs, same bytes
    assert first[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = ET.parse(first[1]).getroot()
    assert svg.tag.endswith("svg")
    assert "team/a" in first[1].read_text()
    heat = plot_heatmap(["a", "b"], [[1.0, 0.2], [0.2, None]], tmp_path / "h", title="cos")
    assert heat[0].stat().st_size > 1000
    spectra = plot_spectra({"a": {"q": [0.5, 0.9, 1.0]}}, tmp_path / "s")
    assert spectra[1].read_text().count("<path") > 3
