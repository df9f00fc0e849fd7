"""Turn ``hub ls`` filters into one SQL query over the index.

Filters apply to the latest version of each repository unless ``all_versions`` is set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from hub.index import Index, card_json, load_card
from schemas.errors import InvalidArgument
from schemas.metrics import MetricCondition, split_name
from schemas.search import check_limit, parse_rank

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


def _fts_query(text: str) -> str:
    # Quote every word so user input can never be read as FTS syntax; prefix-match the words.
    words = re.findall(r"\w+", text)
    if not words:
        raise InvalidArgument(f"invalid query {text!r}: no words to search for")
    return " ".join(f'"{w}"*' for w in words)


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
    """``metric:NAME[@DATASET]OP VALUE`` conditions (``schemas.metrics.MetricCondition``)."""

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
        where: list[str] = []
        params: list[Any] = []
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
            condition = MetricCondition.parse(spec)
            value_sql, value_params = _picked("m.value", condition.name, condition.dataset)
            where.append(f"{value_sql} {condition.op} ?")
            params.extend([*value_params, condition.value])
        order, order_params = self._order_by()
        sql = "SELECT v.id, v.card FROM versions v JOIN repos r ON r.id = v.repo_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order}"
        params.extend(order_params)
        if self.limit is not None:
            sql += " LIMIT ?"
            params.append(check_limit(self.limit))
        return sql, params

    def _order_by(self) -> tuple[str, list[Any]]:
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
