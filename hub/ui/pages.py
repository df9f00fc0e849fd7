"""What each page shows, gathered from the registry (no HTML here: ``hub.ui.render`` and the
templates turn these dicts into pages).

Every function takes the viewer and leaves out, or refuses as not found, what the viewer may
not read: the namespaces of search results, lineage links, what was built from an adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compose.layer_groups import describe_layers
from hub.search import (
    SearchQuery,
    built_from,
    facet_counts,
    metric_names,
    most_common_metric,
    narrowed,
    run_search_page,
)
from hub.ui.access import Viewer, check_readable
from hub.ui.render import README_MAX_BYTES, readme_html
from schemas.errors import InvalidArgument
from schemas.refs import AdapterRef

if TYPE_CHECKING:
    from hub.registry import Registry
    from schemas.card import AdapterCard

PAGE_SIZE = 20
LEDGER = (
    ("params_trained", "trained"),
    ("params_stored", "stored in the adapter file"),
    ("params_changed_when_merged", "changed in the base when merged"),
    ("params_extra_at_inference", "extra at inference (unmerged)"),
    ("params_trainable", "trainable (numbers in the adapter file)"),
)
"""The parameter ledger's fields, in the order shown; each with ``<field>_fraction`` of the
base (``params_trainable``'s is ``params_fraction``). A card shows whichever it has;
``params_trainable``, the old name of ``params_stored``, only on cards without the ledger."""


@dataclass
class SearchForm:
    """The search page's query string, as typed (so the form shows it back)."""

    q: str = ""
    base: str = ""
    method: str = ""
    rank: str = ""
    tasks: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    sort: str = ""
    page: int = 1
    where: list[str] = field(default_factory=list)
    """``hub ls --where`` conditions: a card field (``reduction_factor>=8``) or a metric."""

    def query(self, viewer: Viewer) -> SearchQuery:
        return SearchQuery(
            text=self.q or None,
            base=self.base or None,
            method=self.method or None,
            rank=self.rank or None,
            tasks=list(self.tasks),
            tags=list(self.tags),
            where=list(self.where),
            sort=self.sort or "-created",
            namespaces=viewer.namespaces(),
        )

    def params(self, **changes: Any) -> list[tuple[str, str]]:
        """The query string of this search with ``changes`` (a value of None drops a key,
        ``tasks``/``tags``/``where`` replace the lists); page 1 unless ``page`` is given."""
        values: dict[str, Any] = {
            "q": self.q,
            "base": self.base,
            "method": self.method,
            "rank": self.rank,
            "sort": self.sort,
            "task": list(self.tasks),
            "tag": list(self.tags),
            "where": list(self.where),
            "page": None,
        }
        for key, value in changes.items():
            values[{"tasks": "task", "tags": "tag"}.get(key, key)] = value
        out: list[tuple[str, str]] = []
        for key, value in values.items():
            if isinstance(value, list):
                out += [(key, v) for v in value]
            elif value not in (None, "", 1):
                out.append((key, str(value)))
        return out


def search_page(registry: Registry, viewer: Viewer, form: SearchForm) -> dict[str, Any]:
    """One page of results, the facet counts and the sort choices. Bad filters raise
    ``InvalidArgument`` with the same message as ``hub ls``."""
    if form.page < 1:
        raise InvalidArgument(f"invalid page {form.page}: pages are numbered from 1")
    catalog = registry.catalog
    query = narrowed(catalog, form.query(viewer))
    results = run_search_page(catalog, query, offset=(form.page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    spec = (query.sort or "").lstrip("+-")
    shown_metric = spec.removeprefix("metric:") if spec.startswith("metric:") else None
    for card in results.cards:
        card["shown_metric"] = _metric_value(card, shown_metric) if shown_metric else None
    pages = max(1, -(-results.total // PAGE_SIZE))
    return {
        "form": form,
        "results": results,
        "pages": pages,
        "facets": facet_counts(catalog, query),
        "metrics": metric_names(catalog, query),
        "shown_metric": shown_metric,
    }


def _metric_value(card: dict[str, Any], name: str) -> float | None:
    values = [m["value"] for m in card.get("metrics", []) if m["name"] == name]
    return max(values) if values else None


def adapter_page(registry: Registry, viewer: Viewer, repo: str, rev: str | None) -> dict[str, Any]:
    """The adapter page of ``repo`` at ``rev``: the card and everything linked to it."""
    from hub.evals import records_for

    check_readable(viewer, repo)
    ref = AdapterRef.parse(f"{repo}@{rev}" if rev else repo)
    card = registry.show(ref)
    data = card.model_dump(mode="json")
    versions = registry.versions(card.repo)
    readme = next((f for f in card.files if f.path == "README.md"), None)
    readme_text = None
    if readme is not None and readme.size <= README_MAX_BYTES:
        raw = registry.read_file(card, readme.path)
        readme_text = readme_html(raw.decode("utf-8", "replace"))
    derived = built_from(registry.catalog, card.commit, viewer.namespaces())
    return {
        "card": card,
        "data": data,
        "ledger": ledger(data),
        "evals": records_for(registry, card),
        "versions": [
            {
                "version": v.version,
                "commit": v.commit,
                "created_at": v.created_at,
                "aliases": v.aliases,
                "size_bytes": v.size_bytes,
                "current": v.commit == card.commit,
            }
            for v in reversed(versions)
        ],
        "readme": readme_text,
        "lineage": lineage(viewer, card),
        "built_from": [
            {
                "ref": f"{d['repo']}@{d['commit']}",
                "version": d["version"],
                "method": d["method"],
                "operator": ((d.get("lineage") or {}).get("recipe") or {}).get("operator"),
            }
            for d in derived
        ],
        "composite": composite(viewer, card),
        "config": config_items(registry, card),
    }


def ledger(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The parameter ledger rows this card has: label, count, fraction of the base."""
    rows = []
    for key, label in LEDGER:
        if card.get(key) is None or (key == "params_trainable" and "params_stored" in card):
            continue
        fraction_key = "params_fraction" if key == "params_trainable" else f"{key}_fraction"
        fraction = card.get(fraction_key)
        if fraction is None and card.get("params_base"):
            fraction = card[key] / card["params_base"]
        rows.append({"key": key, "label": label, "value": card[key], "fraction": fraction})
    return rows


def lineage(viewer: Viewer, card: AdapterCard) -> dict[str, Any]:
    """Parent and composite inputs, each as ``{ref, readable}`` (a reference into a namespace
    the viewer may not read is shown without a link), and the recipe."""

    def entry(ref: str) -> dict[str, Any]:
        return {"ref": ref, "readable": viewer.can_read(ref.split("/", 1)[0])}

    recorded = card.lineage
    parent = card.parent or (recorded.parent if recorded else None)
    return {
        "parent": entry(parent) if parent else None,
        "inputs": [entry(r) for r in (recorded.inputs if recorded else [])],
        "recipe": recorded.recipe if recorded else None,
    }


def composite(viewer: Viewer, card: AdapterCard) -> dict[str, Any] | None:
    """A stack's or ensemble's members in order (each with ``readable``, as in ``lineage``),
    or a merge's retained energy per module; None for an adapter that is neither."""
    details = card.details
    members = details.get("members")
    energy = details.get("module_energy")
    recipe = (card.lineage.recipe if card.lineage else None) or {}
    searched = recipe.get("search")
    if not members and not energy and not searched:
        return None
    methods = details.get("member_methods") or []
    return {
        "kind": details.get("kind") or recipe.get("operator"),
        "members": [
            {
                "ref": ref,
                "method": methods[i] if i < len(methods) else None,
                "readable": viewer.can_read(ref.split("/", 1)[0]),
            }
            for i, ref in enumerate(members or [])
        ],
        "aggregate": details.get("aggregate"),
        "retained_energy": details.get("retained_energy"),
        "module_energy": sorted((energy or {}).items()),
        "search": search_view(list(card.lineage.inputs) if card.lineage else [], searched)
        if searched
        else None,
    }


def search_view(inputs: list[str], search: dict[str, Any]) -> dict[str, Any]:
    """What `hub compose search` recorded, for the page: the settings, the weights found per
    input (one per layer group, ``groups`` naming the groups' layers; one group, "all layers",
    without ``--layer-groups``), the held-out comparison and the trace, each step's vector cut
    into its groups and its loss also as a fraction of the worst step's (a bar: how fast the
    search settled)."""
    trace = search.get("trace") or []
    worst = max((step["objective"] for step in trace), default=0.0)
    best = min((step["objective"] for step in trace), default=None)
    layout = search.get("layer_groups") or [[]]
    count = len(inputs)

    def per_group(weights: list[float]) -> list[list[float]]:
        if len(layout) == 1 or not count:
            return [list(weights)]
        return [list(weights[g * count : (g + 1) * count]) for g in range(len(layout))]

    found = per_group(search.get("weights") or [])
    return {
        "settings": {
            key: search.get(key)
            for key in ("optimizer", "operator", "metric", "budget", "bounds", "l1", "seed")
        },
        "groups": [describe_layers(g) if g else "all layers" for g in layout],
        "weights": [
            (ref, [group[i] for group in found if i < len(group)]) for i, ref in enumerate(inputs)
        ],
        "held_out": search.get("held_out") or {},
        "kept_anyway": bool(search.get("kept_anyway")),
        "trace": [
            {
                "step": i + 1,
                "weights": per_group(step["weights"]),
                "loss": step["loss"],
                "objective": step["objective"],
                "bar": step["objective"] / worst if worst > 0 else 0.0,
                "best": step["objective"] == best,
            }
            for i, step in enumerate(trace)
        ],
    }


def config_items(registry: Registry, card: AdapterCard) -> list[tuple[str, str]]:
    """``adapter_config.json`` as (key, JSON value) pairs, or none when there is no such file
    (composites keep one per member)."""
    entry = next((f for f in card.files if f.path == "adapter_config.json"), None)
    if entry is None or entry.size > README_MAX_BYTES:
        return []
    try:
        config = json.loads(registry.read_file(card, entry.path))
    except ValueError:
        return []
    if not isinstance(config, dict):
        return []
    return [(str(k), json.dumps(v, sort_keys=True)) for k, v in sorted(config.items())]


def header_page(
    registry: Registry, viewer: Viewer, repo: str, rev: str | None, path: str
) -> dict[str, Any]:
    """The safetensors header of file ``path``: tensor names, dtypes, shapes, sizes, and the
    metadata, read from the header alone (8 bytes + the JSON header, no tensor data)."""
    from hub.inspect.safetensors_header import read_safetensors_header

    check_readable(viewer, repo)
    card = registry.show(f"{repo}@{rev}" if rev else repo)
    if not path.endswith(".safetensors"):
        raise InvalidArgument(f"{path!r} is not a .safetensors file: it has no header to show")
    entry = registry.file_entry(card, path)
    with registry.store.materialize({path: entry.sha256}) as folder:
        tensors, metadata = read_safetensors_header(folder / path)
    rows = [
        {
            "key": key,
            "dtype": info.dtype,
            "shape": list(info.shape),
            "numel": info.numel,
            "nbytes": info.nbytes,
        }
        for key, info in sorted(tensors.items())
    ]
    return {
        "card": card,
        "path": path,
        "tensors": rows,
        "metadata": sorted(metadata.items()),
        "numel": sum(r["numel"] for r in rows),
        "size": next(f.size for f in card.files if f.path == path),
    }


def base_page(registry: Registry, viewer: Viewer, base: str, page: int) -> dict[str, Any]:
    """Every adapter of base ``base`` (latest versions), grouped by method, with rank and
    the metric most of them carry."""
    if page < 1:
        raise InvalidArgument(f"invalid page {page}: pages are numbered from 1")
    catalog = registry.catalog
    query = SearchQuery(base=base, sort="rank", first="method", namespaces=viewer.namespaces())
    top = most_common_metric(catalog, query)
    if top is not None:
        query.sort = f"metric:{top}"
    size = 100
    results = run_search_page(catalog, query, offset=(page - 1) * size, limit=size)
    groups: dict[str, list[dict[str, Any]]] = {}
    for card in results.cards:
        card["shown_metric"] = _metric_value(card, top) if top else None
        groups.setdefault(card["method"], []).append(card)
    return {
        "base": base,
        "metric": top,
        "groups": groups,
        "methods": facet_counts(catalog, query, only=["method"])["method"],
        "total": results.total,
        "page": page,
        "pages": max(1, -(-results.total // size)),
    }
