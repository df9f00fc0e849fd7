"""Workers keep no state of their own: two apps (``ServerState``s) on one catalog, and two
`hub serve` processes, accept each other's Git LFS upload links, whose signing key lives in
the catalog's settings."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request

import pytest

from hub import Registry
from hub.server.common import LFS_KEY_SETTING
from hub.tokens import create_token
from tests.hub.server.live import lfs_upload_href, serve_process, start_server


def _put(href: str, data: bytes) -> int:
    with urllib.request.urlopen(urllib.request.Request(href, data=data, method="PUT")) as answer:
        return int(answer.status)


def test_two_apps_on_one_catalog_accept_each_others_upload_links(db_url, tmp_path):
    home = tmp_path / "home"
    with Registry(home, db=db_url) as reg:
        token = create_token(reg, "ci", read=[], write=["team"])
    with start_server(home, db=db_url) as one, start_server(home, db=db_url) as two:
        for signer, receiver in ((one, two), (two, one)):
            data = f"signed by {signer.url}".encode()
            href = lfs_upload_href(signer.url, token, data)
            assert _put(href.replace(signer.url, receiver.url), data) == 200
            with Registry(home, db=db_url) as reg:
                assert reg.store.has(hashlib.sha256(data).hexdigest())
        # A link signed with any other key is refused by both.
        data = b"forged"
        href = lfs_upload_href(one.url, token, data)
        forged = href[: href.index("ticket=") + len("ticket=")] + "0" * 64
        for server in (one, two):
            with pytest.raises(urllib.error.HTTPError) as refused:
                _put(forged.replace(one.url, server.url), data)
            assert refused.value.code == 403
            assert refused.value.headers["X-Error-Message"] == "upload link expired or invalid"
    with Registry(home, db=db_url) as reg:
        key = reg.catalog.setting(LFS_KEY_SETTING, "unused")
    assert len(bytes.fromhex(key)) == 32


def test_two_hub_serve_processes_accept_each_others_upload_links(db_url, tmp_path):
    home = tmp_path / "home"
    with Registry(home, db=db_url) as reg:
        token = create_token(reg, "ci", read=[], write=["team"])
    db = ["--db", db_url] if db_url else []
    with (
        serve_process(home, *db, log=tmp_path / "one.log") as one,
        serve_process(home, *db, log=tmp_path / "two.log") as two,
    ):
        for signer, receiver in ((one, two), (two, one)):
            data = f"signed by {signer}".encode()
            href = lfs_upload_href(signer, token, data)
            assert _put(href.replace(signer, receiver), data) == 200
            with Registry(home, db=db_url) as reg:
                assert reg.store.has(hashlib.sha256(data).hexdigest())
