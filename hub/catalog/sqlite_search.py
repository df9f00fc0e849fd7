"""``hub.search.SearchQuery`` as SQLite SQL: FTS5 for the text, GLOB for base patterns, the
metric a card shows picked in SQL, and pages, counts and facets computed by the database."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hub.catalog.base import CardText
from hub.catalog.rows import load_card
from schemas.metrics import MetricCondition
from schemas.search import FieldCondition, check_limit, parse_rank

if TYPE_CHECKING:
    import sqlite3

    from hub.search import SearchQuery

_FROM = "versions v JOIN repos r ON r.id = v.repo_id"
# Without a text match, the latest-version condition (one row per repository) is what
# narrows most, so the loop has to start from the repositories; SQLite's planner (no ANALYZE
# statistics) starts from the versions and reads all 10,000 of them (5-10x slower pages).
# CROSS JOIN fixes the order. With a text match the FTS rowids narrow most: plain join.
_FROM_REPOS_FIRST = "repos r CROSS JOIN versions v ON v.repo_id = r.id"


def _column(field: str) -> str:
    """The SQL column of a ``hub.search.SORT_FIELDS`` value."""
    return "r.repo" if field == "repo" else f"v.{field}"


def _picked(column: str, name: str, dataset: str | None) -> tuple[str, list[Any]]:
    """SQL for ``column`` of the metric row ``schemas.metrics.pick`` chooses on version
    ``v``: the most trusted source first (lowest priority), then the latest (highest position)."""
    sql = f"(SELECT {column} FROM metrics m WHERE m.version_id = v.id AND m.name = ?"
    params: list[Any] = [name]
    if dataset is not None:
        sql += " AND m.dataset = ?"
        params.append(dataset)
    return sql + " ORDER BY m.priority, m.position DESC LIMIT 1)", params


def _fts_query(text: str) -> str:
    from hub.search import text_words

    # Quote every word so user input can never be read as FTS syntax; prefix-match the words.
    return " ".join(f'"{w}"*' for w in text_words(text))


def tables(query: SearchQuery) -> str:
    """The FROM clause (``versions v`` and ``repos r``) in the order that suits the query."""
    return _FROM if query.text or query.within is not None else _FROM_REPOS_FIRST


def conditions(query: SearchQuery) -> tuple[list[str], list[Any]]:
    """The filters as SQL conditions over ``versions v JOIN repos r`` and their parameters."""
    from hub.search import parse_tag

    where: list[str] = []
    params: list[Any] = []
    if query.namespaces is not None:
        if query.namespaces:
            where.append(f"r.namespace IN ({','.join('?' * len(query.namespaces))})")
            params.extend(query.namespaces)
        else:
            where.append("0")  # a token that may read no namespace sees nothing
    if query.within is not None:
        where.append("v.id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(query.within))
    if not query.all_versions:
        where.append("v.version = r.last_version")
    if query.text:
        where.append("v.id IN (SELECT rowid FROM versions_fts WHERE versions_fts MATCH ?)")
        params.append(_fts_query(query.text))
    if query.base:
        if any(c in query.base for c in "*?["):
            where.append("v.base_model GLOB ?")
        else:
            where.append("v.base_model = ?")
        params.append(query.base)
    if query.method:
        method = query.method.lower().replace("-", "_")
        if method == "dora":
            where.append("v.method = 'lora' AND v.variant = 'dora'")
        else:
            where.append("v.method = ?")
            params.append(method)
    if query.library:
        where.append("coalesce(json_extract(v.card, '$.library'), 'peft') = ?")
        params.append(query.library.lower())
    if query.rank:
        low, high = parse_rank(query.rank)
        if low is not None:
            where.append("v.rank >= ?")
            params.append(low)
        if high is not None:
            where.append("v.rank <= ?")
            params.append(high)
    for task in query.tasks:
        where.append("EXISTS (SELECT 1 FROM tasks t WHERE t.version_id = v.id AND t.task = ?)")
        params.append(task)
    for spec in query.tags:
        key, value = parse_tag(spec)
        if value is None:
            where.append("EXISTS (SELECT 1 FROM tags g WHERE g.version_id = v.id AND g.key = ?)")
            params.append(key)
        else:
            where.append(
                "EXISTS (SELECT 1 FROM tags g WHERE g.version_id = v.id"
                " AND g.key = ? AND g.value = ?)"
            )
            params.extend([key, value])
    for spec in query.where:
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


def order_by(query: SearchQuery) -> tuple[str, list[Any]]:
    """The ORDER BY clause of ``query`` and its parameters."""
    order, params = _sort_order(query)
    first = query.first_field()
    if first is None:
        return order, params
    column = _column(first)
    return f"{column} IS NULL, {column}, {order}", params


def _sort_order(query: SearchQuery) -> tuple[str, list[Any]]:
    sort = query.sort_order()
    if sort is None:
        return "r.repo, v.version", []
    if sort.metric is not None:
        # The value `card.metric()` gives (schemas.metrics). Best first by default, by the
        # chosen metric's own direction; +/- sort by the value itself. Adapters without
        # the metric go last either way.
        value, params = _picked("m.value", sort.metric, sort.dataset)
        if sort.direction is None:
            key, key_params = _picked(
                "CASE WHEN m.higher_is_better = 0 THEN m.value ELSE -m.value END",
                sort.metric,
                sort.dataset,
            )
            return f"{value} IS NULL, {key} ASC, r.repo, v.version", [*params, *key_params]
        return f"{value} IS NULL, {value} {sort.direction}, r.repo, v.version", params * 2
    assert sort.field is not None
    column = _column(sort.field)
    return f"{column} IS NULL, {column} {sort.direction}, r.repo, v.version", []


def to_sql(query: SearchQuery) -> tuple[str, list[Any]]:
    """The whole search as one SELECT of ``(v.id, v.card)``."""
    where, params = conditions(query)
    order, order_params = order_by(query)
    sql = f"SELECT v.id, v.card FROM {tables(query)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order}"
    params.extend(order_params)
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(check_limit(query.limit))
    return sql, params


def aliases_by_version(conn: sqlite3.Connection, version_ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for chunk_start in range(0, len(version_ids), 900):
        chunk = version_ids[chunk_start : chunk_start + 900]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT version_id, alias FROM aliases WHERE version_id IN ({marks}) ORDER BY alias",
            chunk,
        ):
            out.setdefault(row[0], []).append(row[1])
    return out


def _with_aliases(conn: sqlite3.Connection, rows: list[tuple[int, str]]) -> list[CardText]:
    aliases = aliases_by_version(conn, [row[0] for row in rows])
    return [CardText(vid, text, aliases.get(vid, [])) for vid, text in rows]


def search(conn: sqlite3.Connection, query: SearchQuery) -> list[CardText]:
    sql, params = to_sql(query)
    return _with_aliases(conn, conn.execute(sql, params).fetchall())


def text_matches(conn: sqlite3.Connection, query: SearchQuery) -> list[int]:
    from hub.search import SearchQuery

    scope = SearchQuery(
        text=query.text, all_versions=query.all_versions, namespaces=query.namespaces
    )
    where, params = conditions(scope)
    rows = conn.execute(f"SELECT v.id FROM {_FROM} WHERE {' AND '.join(where)}", params)
    return [row[0] for row in rows]


def search_page(
    conn: sqlite3.Connection, query: SearchQuery, offset: int, limit: int
) -> tuple[list[CardText], int]:
    where, params = conditions(query)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    source = tables(query)
    total = int(conn.execute(f"SELECT count(*) FROM {source}{clause}", params).fetchone()[0])
    order, order_params = order_by(query)
    # Sort ids only, then read the page's cards: sorting rows that carry the card JSON would
    # copy every match's card through the sorter.
    ids = [
        row[0]
        for row in conn.execute(
            f"SELECT v.id FROM {source}{clause} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, *order_params, limit, offset],
        )
    ]
    marks = ",".join("?" * len(ids))
    texts = dict(
        conn.execute(f"SELECT id, card FROM versions WHERE id IN ({marks})", ids).fetchall()
    )
    return _with_aliases(conn, [(vid, texts[vid]) for vid in ids]), total


def facet_counts(
    conn: sqlite3.Connection, query: SearchQuery, top: int, only: Sequence[str]
) -> dict[str, list[tuple[Any, int]]]:
    from collections import Counter
    from dataclasses import replace

    from hub.search import RANK_BUCKETS, rank_spec

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
        where, params = conditions(without[facet])
        passes.setdefault((" AND ".join(where) or "1", tuple(params)), []).append(facet)
    counts: dict[str, Counter[Any]] = {}
    for (condition, values), facets in passes.items():
        selects = ", ".join(columns[f] for f in facets)
        sql = (
            f"SELECT {selects}, count(*) FROM {tables(unsorted)} WHERE {condition}"
            f" GROUP BY {', '.join(str(n + 1) for n in range(len(facets)))}"
        )
        for row in conn.execute(sql, list(values)):
            for n, facet in enumerate(facets):
                if row[n] is not None:
                    counts.setdefault(facet, Counter())[row[n]] += row[-1]

    def ranked(facet: str) -> list[tuple[Any, int]]:
        found = counts.get(facet, Counter())
        return sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    def joined(select: str, joins: str) -> list[tuple[Any, int]]:
        where, params = conditions(unsorted)
        sql = (
            f"SELECT {select}, count(*) FROM {tables(unsorted)}{joins}"
            f" WHERE {' AND '.join([*where, f'{select} IS NOT NULL'])}"
            " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?"
        )
        return [tuple(row) for row in conn.execute(sql, [*params, top])]

    by_rank = sorted(counts.get("rank", Counter()).items())
    found = {
        "base": lambda: ranked("base"),
        "method": lambda: ranked("method"),
        "rank": lambda: [(rank_spec(*RANK_BUCKETS[i]), n) for i, n in by_rank],
        "task": lambda: joined("t.task", " JOIN tasks t ON t.version_id = v.id"),
        "tag": lambda: joined("g.key || '=' || g.value", " JOIN tags g ON g.version_id = v.id"),
    }
    return {facet: found[facet]() for facet in only}


def metric_names(conn: sqlite3.Connection, query: SearchQuery, top: int) -> list[str]:
    from hub.search import SearchQuery

    scope = SearchQuery(all_versions=query.all_versions, namespaces=query.namespaces)
    where, params = conditions(scope)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT DISTINCT m.name FROM {tables(scope)} JOIN metrics m ON m.version_id = v.id"
        f"{clause} ORDER BY 1 LIMIT ?",
        [*params, top],
    )
    return [row[0] for row in rows]


def built_from(
    conn: sqlite3.Connection, commit: str, namespaces: list[str] | None
) -> list[dict[str, Any]]:
    from hub.search import SearchQuery

    where, params = conditions(SearchQuery(all_versions=True, namespaces=namespaces))
    rows = conn.execute(
        "SELECT v.card FROM lineage l JOIN versions v ON v.id = l.version_id"
        " JOIN repos r ON r.id = v.repo_id"
        f" WHERE {' AND '.join(['l.commit_id = ?', *where])}"
        " GROUP BY v.id ORDER BY v.created_at DESC, v.id DESC",
        [commit, *params],
    )
    return [load_card(row[0]) for row in rows]


def most_common_metric(conn: sqlite3.Connection, query: SearchQuery) -> str | None:
    where, params = conditions(query)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    row = conn.execute(
        f"SELECT m.name FROM {tables(query)} JOIN metrics m ON m.version_id = v.id{clause}"
        " GROUP BY m.name ORDER BY count(DISTINCT v.id) DESC, m.name LIMIT 1",
        params,
    ).fetchone()
    return row[0] if row else None
