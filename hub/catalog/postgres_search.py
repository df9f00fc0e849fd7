"""``hub.search.SearchQuery`` as PostgreSQL SQL: a ``tsvector`` + GIN index for the text, a
regular expression for base patterns, the metric a card shows picked in SQL, and pages,
counts and facets computed by the database.

The results are those of the SQLite backend (``hub.catalog.sqlite_search``): the same
filters, orders (``C`` collation, nulls placed explicitly) and text matching. FTS5's
``unicode61`` tokenizer (``remove_diacritics 2``) is reproduced in ``lexemes``: words are runs
of letters and digits, lower-cased, accents removed; a query word is matched as a prefix and
a query word that holds several (``my_task``) as a phrase, as FTS5 reads ``"my_task"*``.
The words are cut here, in Python, and handed to PostgreSQL as lexemes, so no text search
configuration, dictionary or extension of the server is involved.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hub.catalog.base import CardText
from hub.catalog.rows import load_card
from schemas.metrics import MetricCondition
from schemas.search import FieldCondition, check_limit, parse_rank

if TYPE_CHECKING:
    import psycopg

    from hub.search import SearchQuery

_FROM = "versions v JOIN repos r ON r.id = v.repo_id"
_WORD = re.compile(r"[^\W_]+")
_MAX_LEXEME_BYTES = 2046  # PostgreSQL refuses longer words in a tsvector
_MAX_POSITION = 16383  # and clamps positions beyond this


def _words(text: str) -> list[str]:
    """The words FTS5's ``unicode61`` (``remove_diacritics 2``) finds in ``text``."""
    folded = "".join(
        c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
    )
    return [w for w in _WORD.findall(folded.lower()) if len(w.encode()) <= _MAX_LEXEME_BYTES]


def lexemes(repo: str, description: str | None, tasks: Sequence[str]) -> str:
    """A version's full-text entry as ``tsvector`` input text: the words of its repository
    name, description and tasks, with positions. One position is left out between the three
    so that no phrase matches across two of them (FTS5 columns)."""
    repo_text = repo.replace("/", " ").replace("-", " ").replace("_", " ") + " " + repo
    entries: list[str] = []
    position = 0
    for field in (repo_text, description or "", " ".join(tasks)):
        for word in _words(field):
            position = min(position + 1, _MAX_POSITION)
            entries.append(f"'{word}':{position}")
        position += 1
    return " ".join(entries)


def text_query(text: str) -> str | None:
    """``hub ls`` text as ``tsquery`` input: every word a prefix match, all of them required.
    None when no word is left (FTS5 matches nothing then either)."""
    from hub.search import text_words

    parts = []
    for word in text_words(text):
        found = [f"'{w}'" for w in _words(word)]
        if found:
            found[-1] += ":*"
            parts.append(" <-> ".join(found))
    return " & ".join(f"({p})" for p in parts) if parts else None


def glob_regex(pattern: str) -> str:
    """SQLite's ``GLOB`` pattern (``*``, ``?``, ``[...]``, ``[^...]``; case-sensitive, the
    whole string) as a PostgreSQL regular expression."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            # A ']' right after '[' or '[^' belongs to the set, as in GLOB.
            start = i + 1 + (pattern[i + 1 : i + 2] == "^")
            end = pattern.find("]", start + (pattern[start : start + 1] == "]"))
            if end < 0:
                out.append("\\[")
            else:
                body = pattern[start:end].replace("\\", "\\\\").replace("[", "\\[")
                if body.startswith("]"):
                    body = "\\" + body
                out.append(f"[{'^' if start > i + 1 else ''}{body}]")
                i = end
        else:
            # In PostgreSQL's regular expressions a backslash before a character that is not
            # a letter or digit makes it literal.
            out.append(c if c.isalnum() else "\\" + c)
        i += 1
    out.append("$")
    return "".join(out)


def _column(field: str) -> str:
    """The SQL column of a ``hub.search.SORT_FIELDS`` value."""
    return "r.repo" if field == "repo" else f"v.{field}"


def _picked(column: str, name: str, dataset: str | None) -> tuple[str, list[Any]]:
    """SQL for ``column`` of the metric row ``schemas.metrics.pick`` chooses on version
    ``v``: the most trusted source first (lowest priority), then the latest (highest position)."""
    sql = f"(SELECT {column} FROM metrics m WHERE m.version_id = v.id AND m.name = %s"
    params: list[Any] = [name]
    if dataset is not None:
        sql += " AND m.dataset = %s"
        params.append(dataset)
    return sql + " ORDER BY m.priority, m.position DESC LIMIT 1)", params


def conditions(query: SearchQuery) -> tuple[list[str], list[Any]]:
    """The filters as SQL conditions over ``versions v JOIN repos r`` and their parameters."""
    from hub.search import parse_tag

    where: list[str] = []
    params: list[Any] = []
    if query.namespaces is not None:
        if query.namespaces:
            where.append("r.namespace = ANY(%s)")
            params.append(list(query.namespaces))
        else:
            where.append("FALSE")  # a token that may read no namespace sees nothing
    if query.within is not None:
        where.append("v.id = ANY(%s)")
        params.append(list(query.within))
    if not query.all_versions:
        where.append("v.version = r.last_version")
    if query.text:
        tsquery = text_query(query.text)
        if tsquery is None:
            where.append("FALSE")
        else:
            where.append("v.search @@ %s::tsquery")
            params.append(tsquery)
    if query.base:
        if any(c in query.base for c in "*?["):
            where.append("v.base_model ~ %s")
            params.append(glob_regex(query.base))
        else:
            where.append("v.base_model = %s")
            params.append(query.base)
    if query.method:
        method = query.method.lower().replace("-", "_")
        if method == "dora":
            where.append("v.method = 'lora' AND v.variant = 'dora'")
        else:
            where.append("v.method = %s")
            params.append(method)
    if query.library:
        where.append("coalesce(v.library, 'peft') = %s")
        params.append(query.library.lower())
    if query.rank:
        low, high = parse_rank(query.rank)
        if low is not None:
            where.append("v.rank >= %s")
            params.append(low)
        if high is not None:
            where.append("v.rank <= %s")
            params.append(high)
    for task in query.tasks:
        where.append("EXISTS (SELECT 1 FROM tasks t WHERE t.version_id = v.id AND t.task = %s)")
        params.append(task)
    for spec in query.tags:
        key, value = parse_tag(spec)
        if value is None:
            where.append("EXISTS (SELECT 1 FROM tags g WHERE g.version_id = v.id AND g.key = %s)")
            params.append(key)
        else:
            where.append(
                "EXISTS (SELECT 1 FROM tags g WHERE g.version_id = v.id"
                " AND g.key = %s AND g.value = %s)"
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
        where.append(f"{value_sql} {condition.op} %s")
        params.extend([*value_params, condition.value])
    return where, params


_JSONPATH_OPERATORS = {"=": "==", "!=": "==", ">=": ">=", "<=": "<=", ">": ">", "<": "<"}


def _field(condition: FieldCondition) -> tuple[str, list[Any]]:
    """SQL for a card-field condition, with the SQLite backend's meaning: the field's value or
    any element of a list field (jsonpath's lax mode unwraps arrays, not objects), of the
    condition's type (jsonpath never compares a number with text); ``!=`` needs the field.

    The card is stored as text (it may hold ``NaN``, which jsonb refuses); a card that is not
    valid jsonb matches no field condition. The path comes from ``FieldCondition.parse``
    (identifiers and dots only) and the value is a jsonpath variable, never spliced in."""
    from psycopg.types.json import Jsonb

    card = "(CASE WHEN pg_input_is_valid(v.card, 'jsonb') THEN v.card::jsonb END)"
    test = f"{condition.path} ? (@ {_JSONPATH_OPERATORS[condition.op]} $v)"
    value = Jsonb({"v": condition.value})
    if condition.op == "!=":
        return (
            f"coalesce(jsonb_path_exists({card}, %s::jsonpath), FALSE)"
            f" AND NOT jsonb_path_exists({card}, %s::jsonpath, %s)",
            [condition.path, test, value],
        )
    return f"coalesce(jsonb_path_exists({card}, %s::jsonpath, %s), FALSE)", [test, value]


def _clause(where: list[str]) -> str:
    return f" WHERE {' AND '.join(where)}" if where else ""


def order_by(query: SearchQuery) -> tuple[str, list[Any]]:
    """The ORDER BY clause of ``query`` and its parameters."""
    order, params = _sort_order(query)
    first = query.first_field()
    if first is None:
        return order, params
    column = _column(first)
    return f"{column} IS NULL, {column}, {order}", params


def _sort_order(query: SearchQuery) -> tuple[str, list[Any]]:
    # "x IS NULL" first: SQLite puts nulls first in ascending order, PostgreSQL last; the
    # explicit key gives both the same order (no value last).
    sort = query.sort_order()
    if sort is None:
        return "r.repo, v.version", []
    if sort.metric is not None:
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


def aliases_by_version(conn: psycopg.Connection[Any], ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    if not ids:
        return out
    rows = conn.execute(
        "SELECT version_id, alias FROM aliases WHERE version_id = ANY(%s) ORDER BY alias",
        (ids,),
    )
    for version_id, alias in rows:
        out.setdefault(int(version_id), []).append(alias)
    return out


def _with_aliases(conn: psycopg.Connection[Any], rows: list[tuple[int, str]]) -> list[CardText]:
    aliases = aliases_by_version(conn, [int(row[0]) for row in rows])
    return [CardText(int(vid), text, aliases.get(int(vid), [])) for vid, text in rows]


def search(conn: psycopg.Connection[Any], query: SearchQuery) -> list[CardText]:
    where, params = conditions(query)
    order, order_params = order_by(query)
    sql = f"SELECT v.id, v.card FROM {_FROM}{_clause(where)} ORDER BY {order}"
    params.extend(order_params)
    if query.limit is not None:
        sql += " LIMIT %s"
        params.append(check_limit(query.limit))
    return _with_aliases(conn, conn.execute(sql, params).fetchall())


def text_matches(conn: psycopg.Connection[Any], query: SearchQuery) -> list[int]:
    from hub.search import SearchQuery

    scope = SearchQuery(
        text=query.text, all_versions=query.all_versions, namespaces=query.namespaces
    )
    where, params = conditions(scope)
    rows = conn.execute(f"SELECT v.id FROM {_FROM}{_clause(where)}", params)
    return [int(row[0]) for row in rows]


def search_page(
    conn: psycopg.Connection[Any], query: SearchQuery, offset: int, limit: int
) -> tuple[list[CardText], int]:
    where, params = conditions(query)
    clause = _clause(where)
    found = conn.execute(f"SELECT count(*) FROM {_FROM}{clause}", params).fetchone()
    total = int(found[0]) if found else 0
    order, order_params = order_by(query)
    # Sort ids only, then read the page's cards: sorting rows that carry the card JSON would
    # copy every match's card through the sorter.
    ids = [
        int(row[0])
        for row in conn.execute(
            f"SELECT v.id FROM {_FROM}{clause} ORDER BY {order} LIMIT %s OFFSET %s",
            [*params, *order_params, limit, offset],
        )
    ]
    texts = dict(conn.execute("SELECT id, card FROM versions WHERE id = ANY(%s)", (ids,)))
    return _with_aliases(conn, [(vid, texts[vid]) for vid in ids]), total


def facet_counts(
    conn: psycopg.Connection[Any], query: SearchQuery, top: int, only: Sequence[str]
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
    # As in the SQLite backend: facets whose queries come out the same share one pass.
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
        key = (" AND ".join(where) or "TRUE", tuple(_hashable(p) for p in params))
        passes.setdefault(key, []).append(facet)
    counts: dict[str, Counter[Any]] = {}
    for (condition, values), facets in passes.items():
        selects = ", ".join(columns[f] for f in facets)
        sql = (
            f"SELECT {selects}, count(*) FROM {_FROM} WHERE {condition}"
            f" GROUP BY {', '.join(str(n + 1) for n in range(len(facets)))}"
        )
        for row in conn.execute(sql, [_listed(v) for v in values]):
            for n, facet in enumerate(facets):
                if row[n] is not None:
                    counts.setdefault(facet, Counter())[row[n]] += int(row[-1])

    def ranked(facet: str) -> list[tuple[Any, int]]:
        found = counts.get(facet, Counter())
        return sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    def joined(select: str, joins: str) -> list[tuple[Any, int]]:
        where, params = conditions(unsorted)
        sql = (
            f"SELECT {select}, count(*) FROM {_FROM}{joins}"
            f" WHERE {' AND '.join([*where, f'{select} IS NOT NULL'])}"
            " GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s"
        )
        return [(row[0], int(row[1])) for row in conn.execute(sql, [*params, top])]

    by_rank = sorted(counts.get("rank", Counter()).items())
    found = {
        "base": lambda: ranked("base"),
        "method": lambda: ranked("method"),
        "rank": lambda: [(rank_spec(*RANK_BUCKETS[i]), n) for i, n in by_rank],
        "task": lambda: joined("t.task", " JOIN tasks t ON t.version_id = v.id"),
        "tag": lambda: joined("g.key || '=' || g.value", " JOIN tags g ON g.version_id = v.id"),
    }
    return {facet: found[facet]() for facet in only}


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def metric_names(conn: psycopg.Connection[Any], query: SearchQuery, top: int) -> list[str]:
    from hub.search import SearchQuery

    scope = SearchQuery(all_versions=query.all_versions, namespaces=query.namespaces)
    where, params = conditions(scope)
    rows = conn.execute(
        f"SELECT DISTINCT m.name FROM {_FROM} JOIN metrics m ON m.version_id = v.id"
        f"{_clause(where)} ORDER BY 1 LIMIT %s",
        [*params, top],
    )
    return [row[0] for row in rows]


def built_from(
    conn: psycopg.Connection[Any], commit: str, namespaces: list[str] | None
) -> list[dict[str, Any]]:
    from hub.search import SearchQuery

    where, params = conditions(SearchQuery(all_versions=True, namespaces=namespaces))
    rows = conn.execute(
        "SELECT v.card FROM lineage l JOIN versions v ON v.id = l.version_id"
        " JOIN repos r ON r.id = v.repo_id"
        f" WHERE {' AND '.join(['l.commit_id = %s', *where])}"
        " GROUP BY v.id ORDER BY v.created_at DESC, v.id DESC",
        [commit, *params],
    )
    return [load_card(row[0]) for row in rows]


def most_common_metric(conn: psycopg.Connection[Any], query: SearchQuery) -> str | None:
    where, params = conditions(query)
    row = conn.execute(
        f"SELECT m.name FROM {_FROM} JOIN metrics m ON m.version_id = v.id{_clause(where)}"
        " GROUP BY m.name ORDER BY count(DISTINCT v.id) DESC, m.name LIMIT 1",
        params,
    ).fetchone()
    return row[0] if row else None
