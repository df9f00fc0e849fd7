"""Turn ``hub ls`` filters into one SQL query over the index.

Filters apply to the latest version of each repository unless ``all_versions`` is set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from hub.index import Index, card_json, load_card
from schemas.errors import InvalidArgument
from schemas.metrics import MetricCondition, split_name
from schemas.search import FieldCondition, check_limit, parse_rank

SORT_COLUMNS: dict[str, str] = {
    "name": "r.repo",
    "repo": "r.repo",
    "version": "v.version",
    "created": "v.created_at",
    "created_at": "v.created_at",
    "rank": "v.rank",
    "size": "v.size_bytes",
    "size_bytes": "v.size_bytes",
    "params": "v.params_trainable",
    "params_trainable": "v.params_trainable",
    "method": "v.method",
    "base": "v.base_model",
    "base_model": "v.base_model",
}
# Newest and best first unless the user says otherwise with a leading '+'.
_DESCENDING_BY_DEFAULT = {"created", "created_at", "version"}


def parse_tag(spec: str) -> tuple[str, str | None]:
    """``"K=V"`` -> (K, V); ``"K"`` -> (K, None) meaning "has the key"."""
    key, sep, value = spec.partition("=")
    if not key:
        raise InvalidArgument(f"invalid --tag {spec!r}: expected KEY=VALUE")
    return key, (value if sep else None)


def _picked(column: str, name: str, dataset: str | None) -> tuple[str, list[Any]]:
    """SQL for ``column`` of the metric row ``schemas.metrics.pick`` chooses on version
    ``v``: the most trusted source first (lowest priority), then the latest (highest position)."""
    sql = f"(SELECT {column} FROM metrics m WHERE m.version_id = v.id AND m.name = ?"
    params: list[Any] = [name]
    if dataset is not None:
        sql += " AND m.dataset = ?"
        params.append(dataset)
    return sql + " ORDER BY m.priority, m.position DESC LIMIT 1)", params


def _field(condition: FieldCondition) -> tuple[str, list[Any]]:
    """SQL for a card-field condition: the field's value, or any element of a list field,
    of the condition's type (a number never compares with text; a per-layer mapping such as
    a dict ``reduction_factor`` matches nothing). ``!=`` needs the field to be present."""
    types = "('integer', 'real')" if isinstance(condition.value, float) else "('text')"
    path = condition.path
    if condition.op == "!=":
        return (
            f"json_type(v.card, ?) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM"
            f" json_each(v.card, ?) j WHERE j.type IN {types} AND j.value = ?)",
            [path, path, condition.value],
        )
    return (
        f"json_type(v.card, ?) != 'object' AND EXISTS (SELECT 1 FROM json_each(v.card, ?) j"
        f" WHERE j.type IN {types} AND j.value {condition.op} ?)",
        [path, path, condition.value],
    )


def _fts_query(text: str) -> str:
    # Quote every word so user input can never be read as FTS syntax; prefix-match the words.
    words = re.findall(r"\w+", text)
    if not words:
        raise InvalidArgument(f"invalid query {text!r}: no words to search for")
    return " ".join(f'"{w}"*' for w in words)


_FROM = "versions v JOIN repos r ON r.id = v.repo_id"
# Without a text match, the latest-version condition (one row per repository) is what
# narrows most, so the loop has to start from the repositories; SQLite's planner (no ANALYZE
# statistics) starts from the versions and reads all 10,000 of them (5-10x slower pages).
# CROSS JOIN fixes the order. With a text match the FTS rowids narrow most: plain join.
_FROM_REPOS_FIRST = "repos r CROSS JOIN versions v ON v.repo_id = r.id"


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
    """A field of ``SORT_COLUMNS`` to order by before ``sort`` (the base page groups by
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

    def to_sql(self) -> tuple[str, list[Any]]:
        where, params = self.conditions()
        order, order_params = self._order_by()
        sql = f"SELECT v.id, v.card FROM {self.tables}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order}"
        params.extend(order_params)
        if self.limit is not None:
            sql += " LIMIT ?"
            params.append(check_limit(self.limit))
        return sql, params

    @property
    def tables(self) -> str:
        """The FROM clause (``versions v`` and ``repos r``) in the order that suits the query."""
        return _FROM if self.text or self.within is not None else _FROM_REPOS_FIRST

    def conditions(self) -> tuple[list[str], list[Any]]:
        """The filters as SQL conditions over ``versions v JOIN repos r`` and their parameters."""
        where: list[str] = []
        params: list[Any] = []
        if self.namespaces is not None:
            if self.namespaces:
                where.append(f"r.namespace IN ({','.join('?' * len(self.namespaces))})")
                params.extend(self.namespaces)
            else:
                where.append("0")  # a token that may read no namespace sees nothing
        if self.within is not None:
            where.append("v.id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(self.within))
        if not self.all_versions:
            where.append("v.version = r.last_version")
        if self.text:
            where.append("v.id IN (SELECT rowid FROM versions_fts WHERE versions_fts MATCH ?)")
            params.append(_fts_query(self.text))
        if self.base:
            if any(c in self.base for c in "*?["):
                where.append("v.base_model GLOB ?")
            else:
                where.append("v.base_model = ?")
            params.append(self.base)
        if self.method:
            method = self.method.lower().replace("-", "_")
            if method == "dora":
                where.append("v.method = 'lora' AND v.variant = 'dora'")
            else:
                where.append("v.method = ?")
                params.append(method)
        if self.library:
            where.append("coalesce(json_extract(v.card, '$.library'), 'peft') = ?")
            params.append(self.library.lower())
        if self.rank:
            low, high = parse_rank(self.rank)
            if low is not None:
                where.append("v.rank >= ?")
                params.append(low)
            if high is not None:
                where.append("v.rank <= ?")
                params.append(high)
        for task in self.tasks:
            where.append("EXISTS (SELECT 1 FROM tasks t WHERE t.version_id = v.id AND t.task = ?)")
            params.append(task)
        for spec in self.tags:
            key, value = parse_tag(spec)
            if value is None:
                where.append(
                    "EXISTS (SELECT 1 FROM tags g WHERE g.version_id = v.id AND g.key = ?)"
                )
                params.append(key)
            else:
                where.append(
                    "EXISTS (SELECT 1 FROM tags g WHERE g.version_id = v.id"
                    " AND g.key = ? AND g.value = ?)"
                )
                params.extend([key, value])
        for spec in self.where:
            if not spec.strip().startswith("metric:"):
                field_sql, field_params = _field(FieldCondition.parse(spec))
                where.append(field_sql)
                params.extend(field_params)
                continue
            condition = MetricCondition.parse(spec)
            value_sql, value_params = _picked("m.value", condition.name, condition.dataset)
            where.append(f"{value_sql} {condition.op} ?")
            params.extend([*value_params, condition.value])
        return where, params

    def _order_by(self) -> tuple[str, list[Any]]:
        order, params = self._sort_order()
        if self.first is None:
            return order, params
        column = SORT_COLUMNS.get(self.first)
        if column is None:
            raise InvalidArgument(f"invalid first sort field {self.first!r}")
        return f"{column} IS NULL, {column}, {order}", params

    def _sort_order(self) -> tuple[str, list[Any]]:
        if not self.sort:
            return "r.repo, v.version", []
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
            # The value `card.metric()` gives (schemas.metrics). Best first by default, by the
            # chosen metric's own direction; +/- sort by the value itself. Adapters without
            # the metric go last either way.
            value, params = _picked("m.value", name, dataset)
            if direction is None:
                key, key_params = _picked(
                    "CASE WHEN m.higher_is_better = 0 THEN m.value ELSE -m.value END",
                    name,
                    dataset,
                )
                return (
                    f"{value} IS NULL, {key} ASC, r.repo, v.version",
                    [*params, *key_params],
                )
            return f"{value} IS NULL, {value} {direction}, r.repo, v.version", params * 2
        column = SORT_COLUMNS.get(spec)
        if column is None:
            choices = ", ".join(sorted(SORT_COLUMNS)) + ", metric:NAME"
            raise InvalidArgument(f"invalid --sort {self.sort!r}: choose one of {choices}")
        default = "DESC" if spec in _DESCENDING_BY_DEFAULT else "ASC"
        return f"{column} IS NULL, {column} {direction or default}, r.repo, v.version", []


def run_search_json(index: Index, query: SearchQuery) -> list[str]:
    """Like ``run_search`` but each card as its JSON text, never parsed.

    The index stores every card as JSON without its (mutable) aliases; splicing the aliases
    into the stored text keeps ``hub ls --json`` on 10,000 versions from spending most of its
    time decoding and re-encoding JSON it only passes through.
    """
    sql, params = query.to_sql()
    rows = index.conn.execute(sql, params).fetchall()
    aliases = index.aliases_by_version([row[0] for row in rows])
    return [
        f'{card_json(text)[:-1]}, "aliases": {json.dumps(aliases.get(version_id, []))}}}'
        for version_id, text in rows
    ]


def run_search(index: Index, query: SearchQuery) -> list[dict[str, Any]]:
    """Cards (as JSON-ready dicts, aliases filled in) matching ``query``, in order."""
    sql, params = query.to_sql()
    rows = index.conn.execute(sql, params).fetchall()
    aliases = index.aliases_by_version([row[0] for row in rows])
    cards = []
    for version_id, text in rows:
        card = load_card(text)
        card["aliases"] = aliases.get(version_id, [])
        cards.append(card)
    return cards


def narrowed(index: Index, query: SearchQuery) -> SearchQuery:
    """``query`` with its text match replaced by the ids it matches (in its namespaces and
    versions), for running several queries over one search (a page, its count, the facets):
    the full-text match and the check of every matching version happen once, not in each.
    A query without text is returned as it is."""
    if not query.text:
        return query
    from dataclasses import replace

    scope = SearchQuery(
        text=query.text, all_versions=query.all_versions, namespaces=query.namespaces
    )
    where, params = scope.conditions()
    rows = index.conn.execute(f"SELECT v.id FROM {_FROM} WHERE {' AND '.join(where)}", params)
    return replace(query, text=None, within=[row[0] for row in rows])


@dataclass
class SearchPage:
    """One page of results: the cards (dicts, aliases filled in) and how many match in all."""

    cards: list[dict[str, Any]]
    total: int
    offset: int
    limit: int


MAX_PAGE = 200
"""The most results one page holds."""


def run_search_page(index: Index, query: SearchQuery, *, offset: int, limit: int) -> SearchPage:
    """Results ``offset .. offset + limit`` of ``query`` and the total count, both in SQL:
    only the page's cards are read and parsed, whatever the number of matches.

    Raises:
        InvalidArgument: a negative offset, a page size outside 1..MAX_PAGE, or a bad filter.
    """
    if offset < 0:
        raise InvalidArgument(f"invalid page offset {offset}: must be 0 or more")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"invalid page size {limit}: give 1 to {MAX_PAGE}")
    where, params = query.conditions()
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    tables = query.tables
    total = int(index.conn.execute(f"SELECT count(*) FROM {tables}{clause}", params).fetchone()[0])
    order, order_params = query._order_by()
    # Sort ids only, then read the page's cards: sorting rows that carry the card JSON would
    # copy every match's card through the sorter.
    ids = [
        row[0]
        for row in index.conn.execute(
            f"SELECT v.id FROM {tables}{clause} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, *order_params, limit, offset],
        )
    ]
    marks = ",".join("?" * len(ids))
    texts = dict(
        index.conn.execute(f"SELECT id, card FROM versions WHERE id IN ({marks})", ids).fetchall()
    )
    aliases = index.aliases_by_version(ids)
    cards = []
    for version_id in ids:
        card = load_card(texts[version_id])
        card["aliases"] = aliases.get(version_id, [])
        cards.append(card)
    return SearchPage(cards, total, offset, limit)


RANK_BUCKETS: list[tuple[int, int | None]] = [
    (1, 4), (5, 8), (9, 16), (17, 32), (33, 64), (65, 256), (257, None),
]  # fmt: skip
"""The rank ranges the rank facet counts (inclusive; None: no upper bound)."""


def rank_spec(low: int, high: int | None) -> str:
    """A bucket as a ``--rank`` filter: ``(9, 16)`` -> ``"9..16"``, ``(257, None)`` -> ``257..``."""
    return f"{low}..{high}" if high is not None else f"{low}.."


FACETS = ("base", "method", "rank", "task", "tag")


def facet_counts(
    index: Index, query: SearchQuery, *, top: int = 20, only: Sequence[str] = FACETS
) -> dict[str, list[Any]]:
    """How many results each value of each facet would give, as ``(value, count)`` lists,
    most frequent first (at most ``top`` each).

    A single-valued filter (base, method, rank) is left out of its own facet's counts, so the
    alternatives to the chosen value still show; tasks and tags (each one more condition) are
    counted among the results, to narrow them further. Keys (``only`` those asked for):
    ``base``, ``method``, ``rank`` (``"9..16"`` specs, in rank order), ``task``, ``tag``
    (``"K=V"``).
    """
    from collections import Counter
    from dataclasses import replace

    unsorted = replace(query, sort=None, limit=None)
    buckets = " ".join(
        f"WHEN v.rank BETWEEN {low} AND {high} THEN {i}"
        if high is not None
        else f"WHEN v.rank >= {low} THEN {i}"
        for i, (low, high) in enumerate(RANK_BUCKETS)
    )
    # The card columns' facets, each under the query without its own filter. Facets whose
    # queries come out the same (the usual case: none of the three is set) share one pass
    # grouped by all their columns, summed up here: the rows are read once, not three times.
    columns = {"base": "v.base_model", "method": "v.method", "rank": f"CASE {buckets} END"}
    columns = {facet: select for facet, select in columns.items() if facet in only}
    passes: dict[tuple[str, tuple[Any, ...]], list[str]] = {}
    without = {
        "base": replace(unsorted, base=None),
        "method": replace(unsorted, method=None),
        "rank": replace(unsorted, rank=None),
    }
    for facet in columns:
        where, params = without[facet].conditions()
        passes.setdefault((" AND ".join(where) or "1", tuple(params)), []).append(facet)
    counts: dict[str, Counter[Any]] = {}
    for (condition, values), facets in passes.items():
        selects = ", ".join(columns[f] for f in facets)
        sql = (
            f"SELECT {selects}, count(*) FROM {unsorted.tables} WHERE {condition}"
            f" GROUP BY {', '.join(str(n + 1) for n in range(len(facets)))}"
        )
        for row in index.conn.execute(sql, list(values)):
            for n, facet in enumerate(facets):
                if row[n] is not None:
                    counts.setdefault(facet, Counter())[row[n]] += row[-1]

    def ranked(facet: str) -> list[tuple[Any, int]]:
        found = counts.get(facet, Counter())
        return sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    def joined(select: str, joins: str) -> list[tuple[Any, int]]:
        where, params = unsorted.conditions()
        sql = (
            f"SELECT {select}, count(*) FROM {unsorted.tables}{joins}"
            f" WHERE {' AND '.join([*where, f'{select} IS NOT NULL'])}"
            " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?"
        )
        return [tuple(row) for row in index.conn.execute(sql, [*params, top])]

    by_rank = sorted(counts.get("rank", Counter()).items())
    found = {
        "base": lambda: ranked("base"),
        "method": lambda: ranked("method"),
        "rank": lambda: [(rank_spec(*RANK_BUCKETS[i]), n) for i, n in by_rank],
        "task": lambda: joined("t.task", " JOIN tasks t ON t.version_id = v.id"),
        "tag": lambda: joined("g.key || '=' || g.value", " JOIN tags g ON g.version_id = v.id"),
    }
    return {facet: found[facet]() for facet in only}


def metric_names(index: Index, query: SearchQuery, *, top: int = 50) -> list[str]:
    """The metric names recorded on the versions ``query`` would search (its namespaces and
    versions, no other filter): what a search can sort by."""
    scope = SearchQuery(all_versions=query.all_versions, namespaces=query.namespaces)
    where, params = scope.conditions()
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = index.conn.execute(
        f"SELECT DISTINCT m.name FROM {scope.tables} JOIN metrics m ON m.version_id = v.id{clause}"
        " ORDER BY 1 LIMIT ?",
        [*params, top],
    )
    return [row[0] for row in rows]


def built_from(index: Index, commit: str, namespaces: list[str] | None) -> list[dict[str, Any]]:
    """The versions whose lineage names the version ``commit`` (a composite input or a
    training parent, both recorded by exact commit), newest first, in ``namespaces`` (None:
    all). Cards as dicts."""
    scope = SearchQuery(all_versions=True, namespaces=namespaces)
    where, params = scope.conditions()
    rows = index.conn.execute(
        "SELECT v.card FROM lineage l JOIN versions v ON v.id = l.version_id"
        " JOIN repos r ON r.id = v.repo_id"
        f" WHERE {' AND '.join(['l.commit_id = ?', *where])}"
        " GROUP BY v.id ORDER BY v.created_at DESC, v.id DESC",
        [commit, *params],
    )
    return [load_card(row[0]) for row in rows]


def most_common_metric(index: Index, query: SearchQuery) -> str | None:
    """The metric name recorded on most of ``query``'s results (ties: alphabetical)."""
    where, params = query.conditions()
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    row = index.conn.execute(
        f"SELECT m.name FROM {query.tables} JOIN metrics m ON m.version_id = v.id{clause}"
        " GROUP BY m.name ORDER BY count(DISTINCT v.id) DESC, m.name LIMIT 1",
        params,
    ).fetchone()
    return row[0] if row else None
