"""Turning page data into HTML: the Jinja2 environment, its filters, the static files and the
headers every page carries.

Autoescaping is on for every template, so anything from an adapter (README, config values,
file and tensor names, tags) is text; the only HTML that is not escaped is the README rendered
by markdown-it with raw HTML off (``readme_html``). The Content-Security-Policy allows scripts,
styles and images from the page's own origin only (plus ``data:`` images for the plots): even a
string that slipped through could not run.
"""

from __future__ import annotations

import math
import time
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from cli.output import human_size  # one spelling of sizes for the CLI and the page

PREFIX = "/ui"
"""Where the pages live, under ``hub serve`` and ``hub ui`` alike."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Pages depend on the viewer's token: no shared cache may keep them.
    "Cache-Control": "no-store",
}
STATIC_TYPES = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
README_MAX_BYTES = 512 * 1024
"""A README larger than this is not rendered (its description still shows)."""


def count(n: int | None) -> str:
    """``1234567`` -> ``"1,234,567"``."""
    return "-" if n is None else f"{n:,}"


def percent(fraction: float | None) -> str:
    """A fraction of the base as a percentage with 3 significant digits."""
    if fraction is None:
        return "-"
    return f"{fraction * 100:.3g} %"


def number(value: Any) -> str:
    """A metric value: 4 significant digits, integers as integers."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def interval(ci: Any) -> str:
    """``[0.61, 0.74]`` -> ``"[0.61, 0.74]"`` with the values' 4 significant digits."""
    if not ci or len(ci) != 2:
        return "-"
    return f"[{number(ci[0])}, {number(ci[1])}]"


def adapter_url(repo: str, revision: str | None = None) -> str:
    """The adapter page of ``repo`` (``ns/name``) at ``revision`` (default: latest)."""
    url = f"{PREFIX}/adapters/{repo}"
    return f"{url}?{urlencode({'rev': revision})}" if revision else url


def ref_url(ref: str) -> str:
    """The page of a reference ``ns/name[@rev]``."""
    repo, _, revision = ref.partition("@")
    return adapter_url(repo, revision or None)


def base_url(base: str) -> str:
    return f"{PREFIX}/base?{urlencode({'name': base})}"


def short(commit: str | None) -> str:
    return (commit or "")[:12]


@cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hub.ui", "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        size=human_size,
        count=count,
        percent=percent,
        number=number,
        interval=interval,
        short=short,
        ref_url=ref_url,
    )
    env.globals.update(adapter_url=adapter_url, base_url=base_url, prefix=PREFIX)
    return env


def page(
    request: Request, template: str, context: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    """Render ``template`` with ``context`` plus what every page shows (the viewer, the
    time it took: ``Server-Timing``, from the moment the route started)."""
    started = getattr(request.state, "ui_started", None)
    viewer = getattr(request.state, "ui_viewer", None)
    html = (
        _environment()
        .get_template(template)
        .render(
            viewer=viewer, page_path=request.url.path, page_query=str(request.url.query), **context
        )
    )
    response = HTMLResponse(html, status_code=status, headers=HEADERS)
    if started is not None:
        elapsed = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={elapsed:.2f}"
    if getattr(request.state, "ui_clear_cookie", False):
        from hub.ui.access import clear_cookie

        clear_cookie(response)
    return response


@cache
def static_file(name: str) -> bytes | None:
    """The bytes of a file of ``hub/ui/static`` (only the ones ``STATIC_TYPES`` lists)."""
    if name not in STATIC_TYPES:
        return None
    return resources.files("hub.ui").joinpath("static", name).read_bytes()


def static_response(name: str) -> Response:
    data = static_file(name)
    if data is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        data,
        media_type=STATIC_TYPES[name],
        headers={**HEADERS, "Cache-Control": "public, max-age=3600"},
    )


def readme_html(text: str) -> str:
    """A README as HTML: front matter and comments dropped, Markdown rendered with raw HTML
    off (so a ``<script>`` in it is shown as text) and markdown-it's link check (no
    ``javascript:`` links)."""
    import re

    from markdown_it import MarkdownIt

    text = re.sub(r"\A---[ \t]*\r?\n.*?\r?\n---[ \t]*(?:\r?\n|\Z)", "", text, flags=re.DOTALL)
    # HTML comments (PEFT's model-card template is full of them) are invisible on the Hub's
    # pages; with raw HTML off they would show as text.
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table")
    return str(md.render(text))
