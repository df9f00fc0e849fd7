"""The pages' routes (a FastAPI router), the login form, and ``mount_ui``.

Pages are plain GETs whose URL holds the whole query, so a search or a comparison can be
shared as a link. No page changes the registry; the only POSTs are login and logout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse, Response

from hub.errors_http import status_of
from hub.server.common import public_message, state
from hub.ui.access import (
    UiSettings,
    Viewer,
    clear_cookie,
    login,
    same_origin,
    set_cookie,
    settings,
    viewer_of,
)
from hub.ui.render import HEADERS, PREFIX, page, static_response
from schemas.errors import AdapterNotFound, AuthError, HubError, InvalidArgument
from schemas.refs import validate_repo_id

router = APIRouter(include_in_schema=False)
Build = Callable[[Viewer], tuple[str, dict[str, Any]]]


def _render(request: Request, build: Build) -> Response:
    """Run ``build(viewer)`` -> (template, context) and render it; a ``HubError`` becomes an
    error page with the status the API would answer (``hub.errors_http.status_of``), and an
    adapter the viewer may not read is the same 404 as one that does not exist."""
    request.state.ui_started = time.perf_counter()
    try:
        viewer = viewer_of(request)
        request.state.ui_viewer = viewer
        template, context = build(viewer)
        return page(request, template, context)
    except AdapterNotFound as error:
        repo = error.context.get("repo") or ""
        message = f"No adapter named {repo!r} that you may read." if repo else str(error)
        return page(request, "error.html", {"title": "Not found", "message": message}, status=404)
    except HubError as error:
        status = status_of(error)
        title = "Not found" if status == 404 else "Cannot show this page"
        return page(
            request, "error.html", {"title": title, "message": public_message(error)}, status=status
        )


def _page_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"invalid page {text!r}: pages are numbered from 1")
    return int(text)


@router.get("/")
def search(
    request: Request,
    q: str = "",
    base: str = "",
    method: str = "",
    rank: str = "",
    task: list[str] = Query(default=[]),  # noqa: B008
    tag: list[str] = Query(default=[]),  # noqa: B008
    sort: str = "",
    page: str = "1",
    where: list[str] = Query(default=[]),  # noqa: B008
) -> Response:
    from hub.ui.pages import SearchForm, search_page

    def build(viewer: Viewer) -> tuple[str, dict[str, Any]]:
        conditions = [w.strip() for w in where if w.strip()]  # the form's box may be empty
        form = SearchForm(q, base, method, rank, task, tag, sort, _page_number(page), conditions)
        return "search.html", search_page(state(request).registry(), viewer, form)

    return _render(request, build)


@router.get("/adapters/{namespace}/{name}")
def adapter(request: Request, namespace: str, name: str, rev: str = "") -> Response:
    from hub.ui.pages import adapter_page

    def build(viewer: Viewer) -> tuple[str, dict[str, Any]]:
        repo = validate_repo_id(f"{namespace}/{name}")
        context = adapter_page(state(request).registry(), viewer, repo, rev or None)
        context["endpoint"] = str(request.base_url).rstrip("/")
        context["local"] = settings(request).local
        return "adapter.html", context

    return _render(request, build)


@router.get("/adapters/{namespace}/{name}/header")
def header(request: Request, namespace: str, name: str, path: str, rev: str = "") -> Response:
    from hub.ui.pages import header_page

    def build(viewer: Viewer) -> tuple[str, dict[str, Any]]:
        repo = validate_repo_id(f"{namespace}/{name}")
        registry = state(request).registry()
        return "header.html", header_page(registry, viewer, repo, rev or None, path)

    return _render(request, build)


@router.get("/adapters/{namespace}/{name}/diff")
def diff(request: Request, namespace: str, name: str, a: str = "", b: str = "") -> Response:
    from hub.ui.access import check_readable
    from hub.ui.diff import diff_versions

    def build(viewer: Viewer) -> tuple[str, dict[str, Any]]:
        repo = validate_repo_id(f"{namespace}/{name}")
        check_readable(viewer, repo)
        registry = state(request).registry()
        versions = registry.versions(repo)
        if len(versions) < 2 and not (a and b):
            raise InvalidArgument(f"{repo} has one version: there is nothing to compare it with")
        old = registry.show(f"{repo}@{a}") if a else versions[-2]
        new = registry.show(f"{repo}@{b}") if b else versions[-1]
        return "diff.html", {
            "repo": repo,
            "a": old,
            "b": new,
            "versions": versions,
            "diff": diff_versions(registry, old, new),
        }

    return _render(request, build)


@router.get("/base")
def base_model(request: Request, name: str = "", page: str = "1") -> Response:
    from hub.ui.pages import base_page

    def build(viewer: Viewer) -> tuple[str, dict[str, Any]]:
        if not name:
            raise InvalidArgument("name the base model: /ui/base?name=ORG/MODEL")
        registry = state(request).registry()
        return "base_model.html", base_page(registry, viewer, name, _page_number(page))

    return _render(request, build)


@router.get("/compare")
def compare(request: Request, ref: list[str] = Query(default=[])) -> Response:  # noqa: B008
    from hub.ui.compare_view import compare_page

    def build(viewer: Viewer) -> tuple[str, dict[str, Any]]:
        return "compare.html", compare_page(state(request).registry(), viewer, ref)

    return _render(request, build)


@router.get("/compare/plots/{filename}")
def compare_plot(
    request: Request,
    filename: str,
    ref: list[str] = Query(default=[]),  # noqa: B008
) -> Response:
    from hub.ui.compare_view import PLOT_TYPES, plot_file

    try:
        viewer = viewer_of(request)
        data = plot_file(state(request).registry(), viewer, ref, filename)
    except HubError as error:
        status = 404 if isinstance(error, AdapterNotFound) else status_of(error)
        return Response(public_message(error), status_code=status, media_type="text/plain")
    # The URL names exact commits: the image never changes, but only this viewer may see it.
    headers = {**HEADERS, "Cache-Control": "private, max-age=86400"}
    return Response(data, media_type=PLOT_TYPES[filename.rpartition(".")[2]], headers=headers)


@router.get("/static/{name}")
def static(name: str) -> Response:
    return static_response(name)


def _next(target: str) -> str:
    # Only back to one of our own pages: never an open redirect to another site.
    if target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


@router.get("/login")
def login_form(request: Request, next: str = "") -> Response:
    if settings(request).local:
        return RedirectResponse(f"{PREFIX}/", status_code=303)
    return _render(request, lambda viewer: ("login.html", {"next": _next(next), "error": None}))


@router.post("/login")
async def login_submit(request: Request) -> Response:
    if settings(request).local:
        return RedirectResponse(f"{PREFIX}/", status_code=303)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    target = _next((form.get("next") or [""])[0])
    presented = (form.get("token") or [""])[0]

    request.state.ui_started = time.perf_counter()
    request.state.ui_viewer = Viewer(None, everything=False)
    if not same_origin(request):
        message = "This login form was sent from another site: refused."
        return page(request, "login.html", {"next": target, "error": message}, status=403)
    try:
        await run_in_threadpool(lambda: login(state(request).registry(), presented))
    except AuthError:
        message = (
            "That token is invalid or revoked: check it, or create one with `hub token create`."
        )
        return page(request, "login.html", {"next": target, "error": message}, status=401)
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, presented.strip(), secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    response = RedirectResponse(f"{PREFIX}/", status_code=303)
    if same_origin(request):
        clear_cookie(response)
    return response


def mount_ui(app: FastAPI, *, local: bool = False) -> None:
    """Serve the pages under ``/ui/`` of ``app`` (whose ``app.state.hub`` is the server's
    state), and send a browser asking for ``/`` there (``Accept: text/html``); other clients
    get the 404 they got before.

    Args:
        local: ``hub ui``: the user's own registry, every namespace readable, no login.
    """
    app.state.ui = UiSettings(local=local)
    app.include_router(router, prefix=PREFIX)

    @app.get("/", include_in_schema=False)
    def root(request: Request) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse(f"{PREFIX}/", status_code=307)
        return JSONResponse({"detail": "Not Found"}, status_code=404)


def create_ui_app(home: Any) -> FastAPI:
    """The app of ``hub ui``: the pages alone over the registry at ``home``, read-only.

    Example:
        >>> import uvicorn                                                   # doctest: +SKIP
        >>> uvicorn.run(create_ui_app("~/.local/share/hub"), host="127.0.0.1", port=8765)
    """
    from pathlib import Path

    from hub.server.common import ServerState

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = ServerState(Path(home), anonymous_read=True)
    mount_ui(app, local=True)
    return app
