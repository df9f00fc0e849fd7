"""The web page in a real browser: Playwright driving Debian's Chromium (headless) against a
real `hub serve` on 127.0.0.1 with real pushed adapters.

Every test fails on a console error or an uncaught script error on any page it opens (the
``page`` fixture checks at the end). Set ``HUB_UI_SCREENSHOTS=docs`` to refresh the README's
screenshots.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import pytest

from hub import Registry
from hub.inspect.safetensors_header import read_safetensors_header
from hub.ui.render import human_size

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, ui_hub):
    """A fresh browser context (no cookie) whose console errors fail the test."""
    context = browser.new_context(base_url=ui_hub.url, viewport={"width": 1280, "height": 900})
    # A shared 2-core CI machine can be slow: generous limits, the assertions stay exact.
    context.set_default_timeout(120_000)
    tab = context.new_page()
    tab.errors = []
    tab.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: tab.errors.append(f"uncaught: {e}"))
    outside: list[str] = []
    # Nothing may leave the server: every request the page makes goes to it.
    tab.on(
        "request",
        lambda r: None if r.url.startswith((ui_hub.url, "data:")) else outside.append(r.url),
    )
    yield tab
    context.close()
    assert tab.errors == []
    assert outside == []


def login(page, token, next_path="/ui/"):
    page.goto(f"/ui/login?next={urllib.parse.quote(next_path)}")
    page.fill("#token", token)
    page.click("#login-submit")
    page.wait_for_load_state()


def rows(page):
    return page.locator("#results tbody tr").evaluate_all("rs => rs.map(r => r.dataset.repo)")


def query_of(page):
    return urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)


def screenshot(page, name):
    folder = os.environ.get("HUB_UI_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name))


def test_search_filter_by_method_and_rank_and_sort_by_a_metric(page, ui_hub):
    login(page, ui_hub.tokens["team"])
    assert page.inner_text("#viewer-name") == "team-reader"
    assert page.inner_text("#result-count") == "7 adapters, page 1 of 1"
    page.click('[data-facet="method"] a[data-value="lora"]')
    assert query_of(page) == {"method": ["lora"]}
    assert sorted(rows(page)) == ["team/chat-lora", "team/merged", "team/sql-dora",
                                  "team/sql-lora"]  # fmt: skip
    page.click('[data-facet="rank"] a[data-value="1..4"]')
    assert query_of(page) == {"method": ["lora"], "rank": ["1..4"]}
    assert sorted(rows(page)) == ["team/merged", "team/sql-dora", "team/sql-lora"]
    assert page.locator("#results td.rank").all_inner_texts() == ["4", "4", "4"]
    page.click('#active-filters a[data-filter="rank"]')  # drop the rank filter again
    assert query_of(page) == {"method": ["lora"]}
    page.select_option("#sort", "metric:exact_match")  # applies at once (ui.js)
    page.wait_for_url(re.compile(r"sort=metric%3Aexact_match"))
    assert rows(page)[:2] == ["team/sql-lora", "team/chat-lora"]
    assert page.locator("#results td.metric").all_inner_texts()[:2] == ["0.74", "0.55"]
    page.select_option("#sort", "+metric:exact_match")
    page.wait_for_url(re.compile(r"sort=%2Bmetric%3Aexact_match"))
    assert rows(page)[:2] == ["team/chat-lora", "team/sql-lora"]
    # The URL is the whole search: opened afresh, it shows the same page.
    shared = page.url
    page.goto(shared)
    assert rows(page)[:2] == ["team/chat-lora", "team/sql-lora"]
    page.fill("#q", "dora")
    page.press("#q", "Enter")
    page.wait_for_load_state()
    assert rows(page) == ["team/sql-dora"]


def test_adapter_page_shows_the_card(page, ui_hub):
    login(page, ui_hub.tokens["team"])
    page.click('#results a.repo:text-is("team/chat-lora")')
    with Registry(ui_hub.home) as reg:
        card = reg.show("team/chat-lora")
    assert page.inner_text("#title") == "team/chat-lora v1"
    assert page.inner_text("#commit") == card.commit
    fields = {
        "#f-method": card.method,
        "#f-rank": str(card.rank),
        "#f-alpha": "32",
        "#f-targets": ", ".join(card.target_modules),
        "#f-task-type": card.task_type,
        "#f-base": card.base_model,
        "#f-tasks": "chat",
        "#f-size": human_size(card.size_bytes),
    }
    assert {sel: page.inner_text(sel) for sel in fields} == fields
    stored = page.locator('#ledger tr[data-key="params_stored"] td').all_inner_texts()
    assert stored == [f"{card.params_stored:,}",
                      f"{card.params_stored_fraction * 100:.3g} % of the base"]  # fmt: skip
    trained = page.locator('#ledger tr[data-key="params_trained"] td').all_inner_texts()
    assert trained[0] == f"{card.params_trained:,}"
    assert page.locator('#ledger tr[data-key="params_trainable"]').count() == 0
    accuracy = page.locator('#metrics-table tr[data-metric="accuracy"] td').all_inner_texts()
    assert accuracy == ["accuracy", "0.7", "[0.64, 0.76]", "200", "mmlu", "manual", "higher"]
    exact = page.locator('#metrics-table tr[data-metric="exact_match"] td').all_inner_texts()
    assert exact == ["exact_match", "0.55", "-", "-", "spider", "push", "higher"]
    shown_files = page.locator("#files-table tbody tr").evaluate_all(
        "rs => rs.map(r => [r.dataset.path, r.querySelector('[data-bytes]').dataset.bytes,"
        " r.querySelector('code.sha').textContent])"
    )
    assert shown_files == [[f.path, str(f.size), f.sha256] for f in card.files]
    assert page.inner_text("#snippet-pull") == (
        f"hub pull team/chat-lora@v1 -o adapters/chat-lora --from {ui_hub.url}"
    )
    assert f"revision='{card.commit}'" in page.inner_text("#snippet-peft")
    screenshot(page, "ui-adapter.png")
    page.click("#f-base a")
    assert page.inner_text("#base-name") == card.base_model
    assert page.locator('section[data-method="lora"] tr[data-repo="team/chat-lora"]').count() == 1


def test_lineage_link_from_a_composite_to_its_exact_input(page, ui_hub):
    login(page, ui_hub.tokens["team"], "/ui/adapters/team/merged")
    with Registry(ui_hub.home) as reg:
        v1, merged = reg.show("team/sql-lora@v1"), reg.show("team/merged")
        stacked, prompt = reg.show("team/stacked"), reg.show("team/prompt")
    assert page.locator("#inputs li").all_inner_texts() == merged.lineage.inputs
    energies = page.locator("#module-energy meter").evaluate_all("ms => ms.map(m => m.value)")
    expected = [v for _, v in sorted(merged.details["module_energy"].items())]
    assert energies == pytest.approx(expected, abs=1e-8)
    page.click("#inputs li:first-child a")
    assert page.inner_text("#title") == "team/sql-lora v1 prod"  # v1 (alias prod), not v2
    assert page.inner_text("#commit") == v1.commit
    assert sorted(page.locator("#built-from a").all_inner_texts()) == sorted(
        [merged.ref, stacked.ref]
    )
    page.goto("/ui/adapters/team/stacked")
    assert page.locator("#members li a").all_inner_texts() == [v1.ref, prompt.ref]
    # Versions and the diff between them.
    page.goto("/ui/adapters/team/sql-lora")
    page.click("#diff-submit")  # v1 -> v2 preselected
    assert query_of(page) == {"a": ["v1"], "b": ["v2"]}
    assert page.locator('#diff-fields tr[data-field="rank"] td').all_inner_texts() == ["8", "4"]


def test_safetensors_header_preview(page, ui_hub):
    login(page, ui_hub.tokens["team"], "/ui/adapters/team/sql-dora")
    page.click('#files-table tr[data-path="adapter_model.safetensors"] a.header-link')
    with Registry(ui_hub.home) as reg:
        card = reg.show("team/sql-dora")
        tensors, _ = read_safetensors_header(reg.blob_path(card, "adapter_model.safetensors"))
    shown = page.locator("#tensors tbody tr").evaluate_all(
        "rs => rs.map(r => [r.dataset.key, r.querySelector('.dtype').textContent,"
        " r.querySelector('.shape').textContent])"
    )
    assert shown == [
        [key, info.dtype, "[" + ", ".join(map(str, info.shape)) + "]"]
        for key, info in sorted(tensors.items())
    ]
    assert any(key.endswith("lora_magnitude_vector") for key, _, _ in shown)  # DoRA's
    assert page.inner_text("#header-summary").startswith(f"{len(tensors)} tensors, ")


def test_compare_two_adapters_and_see_the_plots(page, ui_hub):
    login(page, ui_hub.tokens["team"], "/ui/?sort=name")
    assert page.is_disabled("#compare-selected")
    page.check('tr[data-repo="team/chat-lora"] input[name=ref]')
    page.check('tr[data-repo="team/sql-lora"] input[name=ref]')
    assert page.is_enabled("#compare-selected")
    # The first comparison in a server process imports torch and matplotlib: allow minutes.
    with page.expect_navigation(timeout=600_000):
        page.click("#compare-selected", no_wait_after=True)
    page.wait_for_selector("#plots figure")
    with Registry(ui_hub.home) as reg:
        refs = [reg.show("team/chat-lora").ref, reg.show("team/sql-lora").ref]
    shown = page.locator("#compare-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.ref)")
    assert shown == refs
    cosine = page.locator("#cosine tbody tr").evaluate_all(
        "rs => rs.map(r => [...r.querySelectorAll('td')].map(td => td.textContent))"
    )
    assert cosine[0][0] == cosine[1][1] == "1" and cosine[0][1] == cosine[1][0]
    assert -1 <= float(cosine[0][1]) <= 1
    plots = page.locator("#plots figure").evaluate_all("fs => fs.map(f => f.dataset.plot)")
    assert plots == ["pareto", "similarity", "spectra"]
    page.wait_for_function(
        "[...document.querySelectorAll('#plots img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    sizes = page.locator("#plots img").evaluate_all("is => is.map(i => i.naturalWidth)")
    assert all(width >= 300 for width in sizes)
    screenshot(page, "ui-compare.png")


def test_private_namespace_needs_a_login(page, ui_hub):
    response = page.goto("/ui/adapters/private/secret-lora")
    assert response.status == 404
    assert page.inner_text("#error-message") == (
        "No adapter named 'private/secret-lora' that you may read."
    )
    page.errors.clear()  # the browser logs the 404 it was meant to get
    page.click("#login-link")
    page.fill("#token", ui_hub.tokens["both"])
    page.click("#login-submit")
    page.wait_for_load_state()
    assert urllib.parse.urlsplit(page.url).path == "/ui/adapters/private/secret-lora"
    assert page.inner_text("#title") == "private/secret-lora v1"
    cookie = next(c for c in page.context.cookies() if c["name"] == "hub_ui_token")
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    page.click("#logout")
    page.wait_for_load_state()
    assert page.goto("/ui/adapters/private/secret-lora").status == 404
    page.errors.clear()


def test_a_readme_with_a_script_renders_inert(page, ui_hub):
    login(page, ui_hub.tokens["team"], "/ui/adapters/team/sql-lora?rev=v1")
    readme = page.locator("article.readme")
    assert "<script>window.__pwned = 1</script>" in readme.inner_text()
    assert readme.locator("script, img, [onerror]").count() == 0
    assert readme.locator("a").count() == 0  # the javascript: link is left as text
    assert page.evaluate("window.__pwned") is None
    assert page.inner_text("#description").startswith("Turns questions into SQL. <script>")
