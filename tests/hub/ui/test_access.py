"""Who sees what on the web page, over HTTP against a real `hub serve` (and `hub ui`): tokens,
the login cookie, 404 for unreadable namespaces, escaping, the `/` redirect, `hub ui`."""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from hub import Registry
from hub.tokens import create_token, revoke_token
from tests.hub.server.live import free_port, start_server

ROOT = Path(__file__).resolve().parents[3]


def request(url, path, *, method="GET", cookie=None, token=None, headers=None, body=None):
    """(status, headers as a dict of lists, body text), never following redirects."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    sent = dict(headers or {})
    if cookie:
        sent["Cookie"] = f"hub_ui_token={cookie}"
    if token:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
    conn.request(method, path, body=body, headers=sent)
    response = conn.getresponse()
    got: dict[str, list[str]] = {}
    for key, value in response.getheaders():
        got.setdefault(key.lower(), []).append(value)
    text = response.read().decode()
    conn.close()
    return response.status, got, text


def repos_listed(html):
    return re.findall(r'<tr data-repo="([^"]+)">', html)


def test_search_lists_only_readable_namespaces(ui_hub):
    _, _, team = request(ui_hub.url, "/ui/?sort=name", cookie=ui_hub.tokens["team"])
    assert repos_listed(team) == [
        "team/chat-lora",
        "team/ia3",
        "team/merged",
        "team/prompt",
        "team/sql-dora",
        "team/sql-lora",
        "team/stacked",
    ]
    _, _, both = request(ui_hub.url, "/ui/?sort=name", cookie=ui_hub.tokens["both"])
    assert repos_listed(both)[0] == "private/secret-lora" and len(repos_listed(both)) == 8
    # The bearer header (scripts) works like the cookie.
    _, _, bearer = request(ui_hub.url, "/ui/?q=secret", token=ui_hub.tokens["both"])
    assert repos_listed(bearer) == ["private/secret-lora"]
    status, _, anonymous = request(ui_hub.url, "/ui/")
    assert status == 200 and repos_listed(anonymous) == []
    assert "shows adapters to signed-in tokens only" in anonymous


def test_unreadable_namespace_is_the_same_404_as_a_missing_one(ui_hub):
    team = ui_hub.tokens["team"]
    pages = [
        "/ui/adapters/private/{}",
        "/ui/adapters/private/{}/header?path=adapter_model.safetensors",
        "/ui/adapters/private/{}/diff?a=v1&b=v1",
        "/ui/compare?ref=team/sql-lora&ref=private/{}",
    ]
    for page in pages:
        hidden = request(ui_hub.url, page.format("secret-lora"), cookie=team)
        missing = request(ui_hub.url, page.format("no-such-lora"), cookie=team)
        assert hidden[0] == missing[0] == 404, page
        assert hidden[2].replace("secret-lora", "X") == missing[2].replace("no-such-lora", "X")
        assert "No adapter named &#39;private/secret-lora&#39; that you may read." in hidden[2]
    assert request(ui_hub.url, "/ui/adapters/private/secret-lora")[0] == 404  # anonymous
    status, _, shown = request(
        ui_hub.url, "/ui/adapters/private/secret-lora", cookie=ui_hub.tokens["both"]
    )
    assert status == 200 and '<h1 id="title">private/secret-lora' in shown
    # Lineage and "built from" never link into a namespace the viewer cannot read: the
    # base page and facets of the private adapter's base do not count it either.
    _, _, base = request(
        ui_hub.url, f"/ui/base?name={urllib.parse.quote(ui_hub.base)}", cookie=team
    )
    assert "private/secret-lora" not in base and "7 adapters" in base


def test_login_sets_a_strict_httponly_cookie_and_logout_clears_it(ui_hub):
    token = ui_hub.tokens["both"]
    form = urllib.parse.urlencode({"token": token, "next": "/ui/adapters/private/secret-lora"})
    status, headers, _ = request(ui_hub.url, "/ui/login", method="POST", body=form)
    assert status == 303 and headers["location"] == ["/ui/adapters/private/secret-lora"]
    cookie = headers["set-cookie"][0]
    assert cookie.startswith(f"hub_ui_token={token};")
    assert {"HttpOnly", "Path=/", "SameSite=strict"} <= {p.strip() for p in cookie.split(";")}
    status, headers, _ = request(ui_hub.url, "/ui/logout", method="POST", cookie=token)
    assert status == 303 and headers["location"] == ["/ui/"]
    assert headers["set-cookie"][0].startswith('hub_ui_token="";')
    assert "Max-Age=0" in headers["set-cookie"][0]


def test_login_refusals(ui_hub):
    bad = urllib.parse.urlencode({"token": "hub_000000000000_nope", "next": "/ui/"})
    status, headers, html = request(ui_hub.url, "/ui/login", method="POST", body=bad)
    assert status == 401 and "set-cookie" not in headers
    assert "That token is invalid or revoked" in html
    good = urllib.parse.urlencode({"token": ui_hub.tokens["team"]})
    status, headers, html = request(
        ui_hub.url,
        "/ui/login",
        method="POST",
        body=good,
        headers={"Origin": "https://evil.example"},
    )
    assert status == 403 and "set-cookie" not in headers
    assert "This login form was sent from another site: refused." in html
    # `next` may only lead back to one of our pages.
    for target in ("https://evil.example/", "//evil.example/ui/", "/api/hub/v1/adapters"):
        form = urllib.parse.urlencode({"token": ui_hub.tokens["team"], "next": target})
        status, headers, _ = request(ui_hub.url, "/ui/login", method="POST", body=form)
        assert (status, headers["location"]) == (303, ["/ui/"]), target


def test_a_revoked_token_cookie_is_logged_out(ui_hub):
    with Registry(ui_hub.home) as reg:
        token = create_token(reg, "short-lived", read=["team"], write=[])
        assert repos_listed(request(ui_hub.url, "/ui/", cookie=token)[2])
        revoke_token(reg, token.split("_")[1])
    status, headers, html = request(ui_hub.url, "/ui/", cookie=token)
    assert status == 200 and repos_listed(html) == []
    assert headers["set-cookie"][0].startswith('hub_ui_token="";')


def test_root_redirects_browsers_and_leaves_the_api_alone(ui_hub):
    status, headers, _ = request(ui_hub.url, "/", headers={"Accept": "text/html,*/*;q=0.8"})
    assert (status, headers["location"]) == (307, ["/ui/"])
    status, _, body = request(ui_hub.url, "/", headers={"Accept": "application/json"})
    assert (status, body) == (404, '{"detail":"Not Found"}')
    status, _, body = request(ui_hub.url, "/api/models/team/sql-lora", token=ui_hub.tokens["team"])
    assert status == 200 and '"id":"team/sql-lora"' in body
    status, _, body = request(ui_hub.url, "/api/hub/v1/adapters", token=ui_hub.tokens["team"])
    assert status == 200 and body.startswith("[{")


def test_everything_from_adapter_files_is_escaped(ui_hub):
    status, headers, html = request(
        ui_hub.url, "/ui/adapters/team/sql-lora?rev=v1", cookie=ui_hub.tokens["team"]
    )
    assert status == 200
    readme = html[html.index('<article class="readme">') :]
    readme = readme[: readme.index("</article>")]
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in readme
    assert "<script" not in readme and "<img" not in readme
    assert 'href="javascript:' not in readme
    # The only script of the page is our own file; the policy forbids any other.
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/ui/static/ui.js" defer>']
    csp = headers["content-security-policy"][0]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert headers["x-content-type-options"] == ["nosniff"]


def test_bad_input_gets_one_clear_message(ui_hub):
    team = ui_hub.tokens["team"]
    cases = {
        "/ui/?rank=abc": (
            400,
            "invalid --rank &#39;abc&#39;: use N, LOW..HIGH, &lt;=N, &lt;N, &gt;=N or &gt;N",
        ),
        "/ui/?page=0": (400, "invalid page &#39;0&#39;: pages are numbered from 1"),
        "/ui/?sort=color": (400, "invalid --sort &#39;color&#39;: choose one of"),
        "/ui/adapters/team/sql-lora?rev=v9": (404, "team/sql-lora has no revision &#39;v9&#39;"),
        "/ui/adapters/team/sql-lora/header?path=README.md": (
            400,
            "&#39;README.md&#39; is not a .safetensors file: it has no header to show",
        ),
        "/ui/adapters/team/ia3/diff": (
            400,
            "team/ia3 has one version: there is nothing to compare it with",
        ),
        "/ui/base": (400, "name the base model: /ui/base?name=ORG/MODEL"),
    }
    for path, (expected_status, message) in cases.items():
        status, _, html = request(ui_hub.url, path, cookie=team)
        assert status == expected_status, path
        assert message in html, (path, html[html.find("error-message") :][:300])


def test_diff_between_versions(ui_hub):
    status, _, html = request(
        ui_hub.url, "/ui/adapters/team/sql-lora/diff?a=v1&b=v2", cookie=ui_hub.tokens["team"]
    )
    assert status == 200
    assert '<tr data-field="rank"><th>rank</th><td class="old"><code>8</code></td>' in html
    assert '<td class="new"><code>4</code></td>' in html
    assert re.search(r'<tr class="changed" data-key="r"><th>r</th><td>changed</td>'
                     r"<td><code>8</code></td><td><code>4</code></td>", html)  # fmt: skip
    changed = dict(
        re.findall(r'<li class="changed" data-key="([^"]+)">changed <code>[^<]+</code>: '
                   r"([^<]+)</li>", html.replace("-&gt;", "->"))
    )  # fmt: skip
    # A and B of q_proj (out 64) and v_proj (out 32: 2 key-value heads) in 2 layers, every
    # one with the new rank.
    expected = {
        "q_proj.lora_A": "F32[8, 64] -> F32[4, 64]",
        "q_proj.lora_B": "F32[64, 8] -> F32[64, 4]",
        "v_proj.lora_A": "F32[8, 64] -> F32[4, 64]",
        "v_proj.lora_B": "F32[32, 8] -> F32[32, 4]",
    }
    assert len(changed) == 8
    for key, what in changed.items():
        assert what == expected[key.split("self_attn.")[1].removesuffix(".weight")], key


def test_anonymous_read_opens_every_namespace(ui_hub):
    with start_server(ui_hub.home, anonymous_read=True) as server:
        _, _, html = request(server.url, "/ui/?sort=name")
        assert len(repos_listed(html)) == 8
        status, _, _ = request(server.url, "/ui/adapters/private/secret-lora")
        assert status == 200


def test_hub_ui_serves_the_local_registry_read_only(ui_hub, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--home", str(ui_hub.home), "ui", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, html = request(url, "/ui/?sort=name")
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "hub ui did not start"
                time.sleep(0.2)
        assert status == 200 and len(repos_listed(html)) == 8  # no token: the user's own
        assert "local registry (read-only)" in html
        assert request(url, "/ui/login")[1]["location"] == ["/ui/"]
        # Read-only: the API and the Hugging Face routes are not served at all.
        assert request(url, "/api/hub/v1/adapters")[0] == 404
        assert request(url, "/api/models/team/sql-lora")[0] == 404
        status, _, html = request(url, "/ui/adapters/private/secret-lora")
        assert status == 200 and "hub pull private/secret-lora@v1 -o adapters/secret-lora<" in html
        # A second one on the same port is refused with one line.
        taken = subprocess.run(
            [sys.executable, "-m", "cli.main", "--home", str(ui_hub.home), "ui", "--port",
             str(port)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert taken.returncode == 1
        assert (
            taken.stderr.strip()
            .splitlines()[-1]
            .startswith(
                f"Error: cannot listen on 127.0.0.1:{port} (Address already in use): another"
                " program uses it; pick another --port"
            )
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert f"Serving {ui_hub.home} on http://127.0.0.1:{port}/ui/" in proc.stderr.read()


@pytest.mark.parametrize("name", ["ui.css", "ui.js"])
def test_static_files_come_from_the_package(ui_hub, name):
    status, _, body = request(ui_hub.url, f"/ui/static/{name}")
    expected = (Path(__file__).resolve().parents[3] / "hub/ui/static" / name).read_text()
    assert status == 200 and body == expected
    assert request(ui_hub.url, "/ui/static/../app.py")[0] == 404
    assert request(ui_hub.url, "/ui/static/other.js")[0] == 404


def test_search_filters_by_card_field_conditions_like_hub_ls_where(ui_hub):
    """``where`` in the URL: `hub ls --where` conditions (card fields, list fields as
    "contains", metrics), each shown as a removable chip; an empty box is ignored and a bad
    condition answers 400 with `hub ls`'s message."""
    team = ui_hub.tokens["team"]
    path = "/ui/?sort=name&where=method%3Dia3&where="
    status, _, html = request(ui_hub.url, path, cookie=team)
    assert status == 200 and repos_listed(html) == ["team/ia3"]
    assert 'data-filter="where">method=ia3 ×</a>' in html
    _, _, html = request(ui_hub.url, "/ui/?sort=name&where=tasks%3Dsql&where=method!%3Dia3",
                         cookie=team)  # fmt: skip
    assert repos_listed(html) == ["team/sql-dora", "team/sql-lora"]
    # The chip for one condition links to the page with the other one alone.
    assert '<a class="chip" href="/ui/?sort=name&amp;where=method%21%3Dia3"' in html
    status, _, html = request(ui_hub.url, "/ui/?where=rank", cookie=team)
    assert status == 400
    assert "invalid --where &#39;rank&#39;: expected FIELD OP VALUE" in html
