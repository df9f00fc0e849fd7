"""The paged, namespace-filtered search the web page runs (hub/search.py), on real pushes."""

from __future__ import annotations

import pytest

from hub import Registry
from hub.search import (
    SearchQuery,
    built_from,
    facet_counts,
    metric_names,
    most_common_metric,
    run_search,
    run_search_page,
)
from schemas.errors import InvalidArgument

TEAM = [
    "team/chat-lora",
    "team/ia3",
    "team/merged",
    "team/prompt",
    "team/sql-dora",
    "team/sql-lora",
    "team/stacked",
]


@pytest.fixture(scope="module")
def index(ui_hub):
    with Registry(ui_hub.home) as reg:
        yield reg.catalog


def _repos(cards):
    return [c["repo"] for c in cards]


def test_namespaces_filter_in_sql(index):
    team = run_search_page(index, SearchQuery(sort="name", namespaces=["team"]), offset=0, limit=50)
    assert _repos(team.cards) == TEAM and team.total == 7
    everything = run_search_page(index, SearchQuery(sort="name"), offset=0, limit=50)
    assert _repos(everything.cards) == sorted([*TEAM, "private/secret-lora"])
    nothing = run_search_page(index, SearchQuery(namespaces=[]), offset=0, limit=50)
    assert (nothing.cards, nothing.total) == ([], 0)


def test_pages_are_slices_of_the_full_order(index):
    query = SearchQuery(sort="-created", namespaces=["team"])
    full = _repos(run_search(index, query))
    pages = [run_search_page(index, query, offset=o, limit=3) for o in (0, 3, 6)]
    assert [p.total for p in pages] == [7, 7, 7]
    assert [_repos(p.cards) for p in pages] == [full[0:3], full[3:6], full[6:7]]
    assert pages[0].cards[0]["repo"] == "team/sql-lora"  # its v2 is the newest push
    assert pages[0].cards[0]["version"] == 2


def test_page_bounds_are_refused(index):
    with pytest.raises(InvalidArgument, match=r"^invalid page size 0: give 1 to 200$"):
        run_search_page(index, SearchQuery(), offset=0, limit=0)
    with pytest.raises(InvalidArgument, match=r"^invalid page offset -1: must be 0 or more$"):
        run_search_page(index, SearchQuery(), offset=-1, limit=10)


def test_facet_counts(index):
    facets = facet_counts(index, SearchQuery(namespaces=["team"]))
    assert dict(facets["method"]) == {"lora": 4, "ia3": 1, "prompt_tuning": 1, "composite": 1}
    # Latest versions: sql-lora v2, sql-dora and the SVD merge have rank 4, the prompt 5
    # virtual tokens, chat-lora rank 16; IA3 and the stack have none.
    assert facets["rank"] == [("1..4", 3), ("5..8", 1), ("9..16", 1)]
    assert dict(facets["task"]) == {"sql": 3, "chat": 1}
    assert facets["tag"] == [("stage=dev", 1)]  # v1's stage=prod is not the latest
    assert len(facets["base"]) == 1 and facets["base"][0][1] == 7  # one base for all


def test_single_valued_facets_ignore_their_own_filter(index):
    facets = facet_counts(index, SearchQuery(method="lora", namespaces=["team"]))
    assert dict(facets["method"])["ia3"] == 1  # the alternatives still show
    assert facets["rank"] == [("1..4", 3), ("9..16", 1)]  # ranks among the LoRAs only
    by_rank = facet_counts(index, SearchQuery(rank="1..4", namespaces=["team"]))
    assert dict(by_rank["method"]) == {"lora": 3}
    assert by_rank["rank"] == [("1..4", 3), ("5..8", 1), ("9..16", 1)]


def test_facets_hide_other_namespaces(index):
    assert dict(facet_counts(index, SearchQuery(namespaces=["private"]))["method"]) == {"lora": 1}
    assert metric_names(index, SearchQuery(namespaces=["private"])) == []
    assert metric_names(index, SearchQuery(namespaces=["team"])) == ["accuracy", "exact_match"]


def test_metric_sort_puts_adapters_without_it_last(index):
    query = SearchQuery(sort="metric:exact_match", namespaces=["team"])
    cards = run_search_page(index, query, offset=0, limit=3).cards
    assert _repos(cards)[:2] == ["team/sql-lora", "team/chat-lora"]  # 0.74, then 0.55
    low_first = SearchQuery(sort="+metric:exact_match", namespaces=["team"])
    assert _repos(run_search_page(index, low_first, offset=0, limit=2).cards) == [
        "team/chat-lora",
        "team/sql-lora",
    ]


def test_built_from_names_exact_commits(ui_hub, index):
    with Registry(ui_hub.home) as reg:
        v1, v2 = reg.show("team/sql-lora@v1"), reg.show("team/sql-lora@v2")
    derived = built_from(index, v1.commit, ["team"])
    assert sorted(d["repo"] for d in derived) == ["team/merged", "team/stacked"]
    assert built_from(index, v2.commit, ["team"]) == []  # built before v2 existed
    assert built_from(index, v1.commit, ["private"]) == []


def test_most_common_metric_and_first_sort(index):
    query = SearchQuery(first="method", sort="name", namespaces=["team"])
    cards = run_search_page(index, query, offset=0, limit=50).cards
    assert [(c["method"], c["repo"]) for c in cards] == sorted(
        (c["method"], c["repo"]) for c in cards
    )
    # exact_match is on two latest versions, accuracy on one (chat-lora; sql-lora's is on v1).
    assert most_common_metric(index, SearchQuery(namespaces=["team"])) == "exact_match"
    with pytest.raises(InvalidArgument, match=r"^invalid first sort field 'color'$"):
        run_search_page(index, SearchQuery(first="color"), offset=0, limit=5)


def test_lineage_table_is_filled_for_older_indexes_and_follows_removals(ui_hub, tmp_path):
    import shutil

    from hub.catalog.sqlite_migrations import MIGRATIONS, _migration_7

    lineage = MIGRATIONS.index(_migration_7) + 1
    home = tmp_path / "home"
    shutil.copytree(ui_hub.home, home)
    with Registry(home) as reg:
        v1 = reg.show("team/sql-lora@v1")
        # As an index written before the lineage migration: no lineage table (nor the
        # tables of later migrations).
        with reg.catalog.write() as conn:
            conn.execute("DROP TABLE lineage")
            conn.execute("DROP TABLE settings")
            conn.execute("DELETE FROM schema_migrations WHERE version >= ?", (lineage,))
        assert reg.catalog.schema_version() == lineage - 1
    with Registry(home) as reg:
        assert reg.catalog.schema_version() == len(MIGRATIONS)
        rows = reg.catalog.conn.execute(
            "SELECT r.repo, l.kind FROM lineage l JOIN versions v ON v.id = l.version_id"
            " JOIN repos r ON r.id = v.repo_id WHERE l.commit_id = ? ORDER BY 1",
            (v1.commit,),
        ).fetchall()
        assert rows == [("team/merged", "input"), ("team/stacked", "input")]
        reg.remove("team/merged")
        derived = built_from(reg.catalog, v1.commit, None)
        assert [d["repo"] for d in derived] == ["team/stacked"]
        # A training parent is lineage too.
        folder = reg.pull("team/ia3", tmp_path / "ia3")
        child = reg.push(folder, name="team/ia3-on-chat", parent="team/chat-lora").card
        chat = reg.show("team/chat-lora")
        assert child.parent == chat.ref
        # (team/merged, also built from chat-lora, was removed above.)
        derived = built_from(reg.catalog, chat.commit, ["team"])
        assert [d["repo"] for d in derived] == ["team/ia3-on-chat"]


@pytest.mark.parametrize(
    "filters",
    [
        {"text": "sql"},
        {"text": "lora", "method": "lora", "sort": "metric:exact_match"},
        {"text": "sql", "rank": "1..4", "tasks": ["sql"], "all_versions": True},
    ],
)
def test_a_narrowed_text_query_gives_the_same_results(index, filters):
    from hub.search import narrowed

    query = SearchQuery(namespaces=["team"], **filters)
    fast = narrowed(index, query)
    assert fast.text is None and fast.within  # the text match became a list of ids
    for offset in (0, 2):
        assert run_search_page(index, fast, offset=offset, limit=2) == run_search_page(
            index, query, offset=offset, limit=2
        )
    assert facet_counts(index, fast) == facet_counts(index, query)
    assert narrowed(index, SearchQuery(method="lora")) == SearchQuery(method="lora")
