"""``hub ls`` filters as one ``SearchQuery``, parsed and checked the same for every catalog
backend (each runs it as one query of its own: ``hub.catalog.sqlite_search``).

Filters apply to the latest version of each repository unless ``all_versions`` is set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from hub.catalog.rows import card_json, load_card
from schemas.errors import InvalidArgument
from schemas.metrics import split_name

if TYPE_CHECKING:
    from hub.catalog.base import CardText, Catalog

SORT_FIELDS: dict[str, str] = {
    "name": "repo",
    "repo": "repo",
    "version": "version",
    "created": "created_at",
    "created_at": "created_at",
    "rank": "rank",
    "size": "size_bytes",
    "size_bytes": "size_bytes",
    "params": "params_trainable",
    "params_trainable": "params_trainable",
    "method": "method",
    "base": "base_model",
    "base_model": "base_model",
}
"""What ``--sort`` (and ``first``) may name -> the card column it orders by (the repository's
name, or one of the version's columns); each backend maps these to its own."""
# Newest and best first unless the user says otherwise with a leading '+'.
_DESCENDING_BY_DEFAULT = {"created", "created_at", "version"}


def parse_tag(spec: str) -> tuple[str, str | None]:
    """``"K=V"`` -> (K, V); ``"K"`` -> (K, None) meaning "has the key"."""
    key, sep, value = spec.partition("=")
    if not key:
        raise InvalidArgument(f"invalid --tag {spec!r}: expected KEY=VALUE")
    return key, (value if sep else None)


def text_words(text: str) -> list[str]:
    """The words of a ``hub ls`` text query, each matched as a prefix by the backend's full-text
    index (never read as its query syntax)."""
    words = re.findall(r"\w+", text)
    if not words:
        raise InvalidArgument(f"invalid query {text!r}: no words to search for")
    return words


@dataclass(frozen=True)
class SortOrder:
    """A parsed ``--sort``: a ``field`` of ``SORT_FIELDS``' values, or a ``metric`` (name and
    ``dataset``) ordered by the value ``card.metric()`` gives. ``direction`` is ``ASC`` or
    ``DESC``; None only for a metric sorted best first by its own direction. Adapters without
    the value go last either way; ties by repository and version."""

    field: str | None = None
    metric: str | None = None
    dataset: str | None = None
    direction: str | None = None


class SearchFilters(TypedDict, total=False):
    """The keyword filters of ``Registry.search`` (and ``hub ls`` options)."""

    base: str | None
    method: str | None
    library: str | None
    rank: str | int | None
    tasks: Iterable[str]
    tags: Iterable[str]
    sort: str | None
    limit: int | None
    all_versions: bool
    where: Iterable[str]
    namespaces: list[str] | None


@dataclass
class SearchQuery:
    """Every ``hub ls`` filter. Empty means "everything"."""

    text: str | None = None
    base: str | None = None
    method: str | None = None
    library: str | None = None
    """``peft`` or ``adapters`` (the card's ``library``; cards from before it are PEFT's)."""
    rank: str | None = None
    tasks: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    sort: str | None = None
    limit: int | None = None
    all_versions: bool = False
    where: list[str] = field(default_factory=list)
    """``metric:NAME[@DATASET]OP VALUE`` conditions (``schemas.metrics.MetricCondition``) and
    ``FIELD OP VALUE`` conditions on a card field (``schemas.search.FieldCondition``)."""
    namespaces: list[str] | None = None
    """Only these namespaces (a token's readable ones); None: every namespace."""
    first: str | None = None
    """A key of ``SORT_FIELDS`` to order by before ``sort`` (the base page groups by
    method, best first within each)."""
    within: list[int] | None = None
    """Only these version ids (``narrowed``: a text match found once, for several queries)."""

    @classmethod
    def of(cls, text: str | None = None, **filters: Any) -> SearchQuery:
        """Build from ``Registry.search``'s arguments (rank may be an int, lists any iterable)."""
        rank = filters.pop("rank", None)
        return cls(
            text=text,
            rank=str(rank) if rank is not None else None,
            tasks=list(filters.pop("tasks", ())),
            tags=list(filters.pop("tags", ())),
            where=list(filters.pop("where", ()) or ()),
            **filters,
        )

    def sort_order(self) -> SortOrder | None:
        """``sort`` parsed (None: by repository and version).

        Raises:
            InvalidArgument: an unknown field, or ``metric:`` without a name.
        """
        if not self.sort:
            return None
        spec = self.sort
        direction: str | None = None
        if spec[0] in "+-":
            direction, spec = ("ASC" if spec[0] == "+" else "DESC"), spec[1:]
        if spec.startswith("metric:"):
            name, dataset = split_name(spec.removeprefix("metric:"))
            if not name:
                raise InvalidArgument(
                    "invalid --sort 'metric:': name the metric, e.g. metric:accuracy"
                )
            return SortOrder(metric=name, dataset=dataset, direction=direction)
        column = SORT_FIELDS.get(spec)
        if column is None:
            choices = ", ".join(sorted(SORT_FIELDS)) + ", metric:NAME"
            raise InvalidArgument(f"invalid --sort {self.sort!r}: choose one of {choices}")
        default = "DESC" if spec in _DESCENDING_BY_DEFAULT else "ASC"
        return SortOrder(field=column, direction=direction or default)

    def first_field(self) -> str | None:
        """The column ``first`` orders by before ``sort`` (nulls last, ascending)."""
        if self.first is None:
            return None
        column = SORT_FIELDS.get(self.first)
        if column is None:
            raise InvalidArgument(f"invalid first sort field {self.first!r}")
        return column


def run_search_json(catalog: Catalog, query: SearchQuery) -> list[str]:
    """Like ``run_search`` but each card as its JSON text, never parsed.

    The index stores every card as JSON without its (mutable) aliases; splicing the aliases
    into the stored text keeps ``hub ls --json`` on 10,000 versions from spending most of its
    time decoding and re-encoding JSON it only passes through.
    """
    return [
        f'{card_json(row.card)[:-1]}, "aliases": {json.dumps(row.aliases)}}}'
        for row in catalog.search(query)
    ]


def _cards(rows: list[CardText]) -> list[dict[str, Any]]:
    cards = []
    for row in rows:
        card = load_card(row.card)
        card["aliases"] = row.aliases
        cards.append(card)
    return cards


def run_search(catalog: Catalog, query: SearchQuery) -> list[dict[str, Any]]:
    """Cards (as JSON-ready dicts, aliases filled in) matching ``query``, in order."""
    return _cards(catalog.search(query))


def narrowed(catalog: Catalog, query: SearchQuery) -> SearchQuery:
    """``query`` with its text match replaced by the ids it matches (in its namespaces and
    versions), for running several queries over one search (a page, its count, the facets):
    the full-text match and the check of every matching version happen once, not in each.
    A query without text is returned as it is."""
    if not query.text:
        return query
    from dataclasses import replace

    return replace(query, text=None, within=catalog.text_matches(query))


@dataclass
class SearchPage:
    """One page of results: the cards (dicts, aliases filled in) and how many match in all."""

    cards: list[dict[str, Any]]
    total: int
    offset: int
    limit: int


MAX_PAGE = 200
"""The most results one page holds."""


def run_search_page(catalog: Catalog, query: SearchQuery, *, offset: int, limit: int) -> SearchPage:
    """Results ``offset .. offset + limit`` of ``query`` and the total count, both in the
    database: only the page's cards are read and parsed, whatever the number of matches.

    Raises:
        InvalidArgument: a negative offset, a page size outside 1..MAX_PAGE, or a bad filter.
    """
    if offset < 0:
        raise InvalidArgument(f"invalid page offset {offset}: must be 0 or more")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"invalid page size {limit}: give 1 to {MAX_PAGE}")
    rows, total = catalog.search_page(query, offset=offset, limit=limit)
    return SearchPage(_cards(rows), total, offset, limit)


RANK_BUCKETS: list[tuple[int, int | None]] = [
    (1, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 256), (257, None),
]  # fmt: skip
"""The rank ranges the rank facet counts (inclusive; None: no upper bound)."""


def rank_spec(low: int, high: int | None) -> str:
    """A bucket as a ``--rank`` filter: ``(9, 16)`` -> ``"9..16"``, ``(257, None)`` -> ``257..``."""
    return f"{low}..{high}" if high is not None else f"{low}.."


FACETS = ("base", "method", "rank", "task", "tag")


def facet_counts(
    catalog: Catalog, query: SearchQuery, *, top: int = 20, only: Sequence[str] = FACETS
) -> dict[str, list[Any]]:
    """How many results each value of each facet would give, as ``(value, count)`` lists,
    most frequent first (at most ``top`` each).

    A single-valued filter (base, method, rank) is left out of its own facet's counts, so the
    alternatives to the chosen value still show; tasks and tags (each one more condition) are
    counted among the results, to narrow them further. Keys (``only`` those asked for):
    ``base``, ``method``, ``rank`` (``"9..16"`` specs of ``RANK_BUCKETS``, in rank order),
    ``task``, ``tag`` (``"K=V"``).
    """
    return dict(catalog.facet_counts(query, top=top, only=only))


def metric_names(catalog: Catalog, query: SearchQuery, *, top: int = 50) -> list[str]:
    """The metric names recorded on the versions ``query`` would search (its namespaces and
    versions, no other filter): what a search can sort by."""
    return catalog.metric_names(query, top=top)


def built_from(catalog: Catalog, commit: str, namespaces: list[str] | None) -> list[dict[str, Any]]:
    """The versions whose lineage names the version ``commit`` (a composite input or a
    training parent, both recorded by exact commit), newest first, in ``namespaces`` (None:
    all). Cards as dicts."""
    return catalog.built_from(commit, namespaces)


def most_common_metric(catalog: Catalog, query: SearchQuery) -> str | None:
    """The metric name recorded on most of ``query``'s results (ties: alphabetical)."""
    return catalog.most_common_metric(query)
