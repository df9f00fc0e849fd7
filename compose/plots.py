"""Plots for ``hub compare`` (and the web page): Pareto frontier, similarity heatmap, spectra.

matplotlib with the Agg backend, written as PNG and SVG. Deterministic: a fixed SVG hash salt,
no dates or software versions in the metadata, and a fixed size and DPI, so the same inputs
give the same bytes on one installation. matplotlib is an extra (``pip install
hub-adapters[plots]``); it is imported only here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.errors import InvalidArgument

FORMATS = ("png", "svg")


@dataclass(frozen=True)
class Point:
    """One adapter on a Pareto plot: a cost on x, a quality on y with its interval."""

    label: str
    x: float
    y: float
    y_low: float | None = None
    y_high: float | None = None


def pareto_front(points: Sequence[Point], *, higher_is_better: bool) -> list[Point]:
    """The points no other point dominates: none has a lower-or-equal x and a better-or-equal
    y with one of them strict. Returned by increasing x.

    Example:
        >>> pts = [Point("a", 1, 0.5), Point("b", 2, 0.4), Point("c", 3, 0.9)]
        >>> [p.label for p in pareto_front(pts, higher_is_better=True)]
        ['a', 'c']
    """

    def better(a: float, b: float) -> bool:
        return a > b if higher_is_better else a < b

    def dominates(p: Point, q: Point) -> bool:
        no_worse = p.x <= q.x and (p.y == q.y or better(p.y, q.y))
        return no_worse and (p.x < q.x or better(p.y, q.y))

    front = [q for q in points if not any(dominates(p, q) for p in points if p is not q)]
    return sorted(front, key=lambda p: (p.x, p.label))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise InvalidArgument(
            "plots need matplotlib: pip install 'hub-adapters[plots]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "hub"
    matplotlib.rcParams["path.simplify"] = False
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        metadata = {"Date": None} if fmt == "svg" else {"Software": None}
        fig.savefig(path, format=fmt, dpi=100, metadata=metadata)
        written.append(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return written


def plot_pareto(
    points: Sequence[Point],
    stem: Path,
    *,
    x_label: str,
    y_label: str,
    higher_is_better: bool,
    log_x: bool = True,
) -> list[Path]:
    """Every adapter as a point with its interval as an error bar; the frontier as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for p in points:
        err = None
        if p.y_low is not None and p.y_high is not None:
            err = [[max(p.y - p.y_low, 0.0)], [max(p.y_high - p.y, 0.0)]]
        ax.errorbar([p.x], [p.y], yerr=err, fmt="o", capsize=3, color="tab:blue")
        ax.annotate(p.label, (p.x, p.y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = pareto_front(points, higher_is_better=higher_is_better)
    ax.plot([p.x for p in front], [p.y for p in front], "--", color="tab:orange", label="Pareto")
    if log_x and all(p.x > 0 for p in points):
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label + (" (higher is better)" if higher_is_better else " (lower is better)"))
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, stem)


def plot_heatmap(
    labels: Sequence[str],
    matrix: Sequence[Sequence[float | None]],
    stem: Path,
    *,
    title: str,
    vmin: float = -1.0,
    vmax: float = 1.0,
) -> list[Path]:
    """A labelled square matrix, colours from ``vmin`` to ``vmax`` (default [-1, 1] for cosine
    similarity; [0, 1] for agreement, [0, max] for KL); missing cells stay blank."""
    import math

    plt = _pyplot()
    n = len(labels)
    size = max(3.5, 1.0 + 0.7 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    values = [[math.nan if v is None else v for v in row] for row in matrix]
    image = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="RdBu_r")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    for i in range(n):
        for j in range(n):
            if matrix[i][j] is not None:
                ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, stem)


def plot_spectra(spectra: dict[str, dict[str, list[float]]], stem: Path) -> list[Path]:
    """Cumulative energy against rank, one panel per adapter, one line per module."""
    plt = _pyplot()
    n = max(len(spectra), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.4), squeeze=False)
    for ax, (label, modules) in zip(axes[0], spectra.items(), strict=False):
        for curve in modules.values():
            ax.plot(range(1, len(curve) + 1), curve, color="tab:blue", alpha=0.35, linewidth=1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("rank")
        ax.set_ylabel("cumulative energy")
        ax.set_ylim(0.0, 1.02)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, stem)
