"""The compare page: ``hub compare``'s report and plots for the adapters a viewer picked.

The report is ``hub.compare.compare`` (the same numbers as ``hub compare --json``) and the
plots are ``hub.compare.write_plots`` (the same files as ``--plot DIR``), written to a temp
folder and kept in memory. Plot URLs name the exact versions compared (``ns/name@<commit>``),
so they never change meaning and any worker can rebuild a plot it does not hold; each request
for one checks again that the viewer may read every adapter in it.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from hub.ui.access import Viewer, check_readable
from hub.ui.render import PREFIX
from schemas.errors import InvalidArgument
from schemas.refs import AdapterRef

if TYPE_CHECKING:
    from hub.registry import Registry

MAX_COMPARED = 8
"""Adapters on one compare page (the similarity is computed for every pair)."""
PLOTS = (
    ("pareto", "Pareto: quality against parameters"),
    ("similarity", "Weight-space cosine similarity"),
    ("spectra", "Spectra: cumulative energy against rank, per module"),
)
PLOT_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
_CACHE_SIZE = 16
_cache: OrderedDict[tuple[str, ...], dict[str, bytes]] = OrderedDict()
_cache_lock = threading.Lock()


def _refs(viewer: Viewer, refs: list[str]) -> list[str]:
    refs = [r.strip() for r in refs if r.strip()]
    if len(refs) > MAX_COMPARED:
        raise InvalidArgument(f"compare at most {MAX_COMPARED} adapters at once, not {len(refs)}")
    for ref in refs:
        check_readable(viewer, AdapterRef.parse(ref).repo)
    return refs


def _plots(report: dict[str, Any]) -> dict[str, bytes]:
    """``{"pareto.png": bytes, ...}`` for ``report``, cached by its exact refs."""
    from hub.compare import write_plots

    key = tuple(a["ref"] for a in report["adapters"])
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    with tempfile.TemporaryDirectory(prefix="hub-ui-plots-") as tmp:
        files = {p.name: p.read_bytes() for p in write_plots(report, Path(tmp))}
    with _cache_lock:
        _cache[key] = files
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return files


def compare_page(registry: Registry, viewer: Viewer, refs: list[str]) -> dict[str, Any]:
    """The report and its plots for ``refs``; fewer than two refs gives the empty picker.

    Raises:
        AdapterNotFound: a ref the viewer may not read (as if it did not exist).
        InvalidArgument: more than ``MAX_COMPARED`` refs, or what ``hub compare`` refuses.
    """
    from hub.compare import compare

    refs = _refs(viewer, refs)
    empty = {"refs": refs, "report": None, "plots": [], "plots_error": None, "columns": []}
    if len(refs) < 2:
        return empty
    report = compare(registry, refs)
    exact = [a["ref"] for a in report["adapters"]]
    plots, plots_error = [], None
    try:
        files = _plots(report)
    except InvalidArgument as error:  # matplotlib is an extra: the table still shows
        files, plots_error = {}, str(error)
    for stem, title in PLOTS:
        if f"{stem}.png" in files:
            query = urlencode([("ref", r) for r in exact])
            plots.append(
                {
                    "name": stem,
                    "title": title,
                    "png": f"{PREFIX}/compare/plots/{stem}.png?{query}",
                    "svg": f"{PREFIX}/compare/plots/{stem}.svg?{query}",
                }
            )
    columns = sorted({name for a in report["adapters"] for name in a["metrics"]})
    return {
        **empty,
        "report": report,
        "plots": plots,
        "plots_error": plots_error,
        "columns": columns,
    }


def plot_file(registry: Registry, viewer: Viewer, refs: list[str], filename: str) -> bytes:
    """The bytes of plot ``filename`` (``pareto.png``, ``spectra.svg``...) of ``refs``.

    Raises:
        AdapterNotFound: a ref the viewer may not read; InvalidArgument: no such plot.
    """
    from hub.compare import compare

    stem, _, fmt = filename.rpartition(".")
    if stem not in {s for s, _ in PLOTS} or fmt not in PLOT_TYPES:
        raise InvalidArgument(f"no plot {filename!r}: pareto, similarity or spectra, .png or .svg")
    refs = _refs(viewer, refs)
    if len(refs) < 2:
        raise InvalidArgument("a plot compares two adapters or more: give ref=... twice")
    key = tuple(refs)
    with _cache_lock:
        files = _cache.get(key)
    if files is None:
        files = _plots(compare(registry, refs))
    if filename not in files:
        raise InvalidArgument(f"no {stem} plot for these adapters (no metric to plot?)", status=404)
    return files[filename]
