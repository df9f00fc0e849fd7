"""Faults on the team hub (PostgreSQL + S3, real servers): the object store stopping during
an upload, a worker SIGKILLed in the middle of a commit. Clients get a clear, retryable error;
no half version is ever visible; nothing committed is lost; `hub verify` is healthy after;
`hub gc` removes only true orphans; the retry succeeds."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from hub import Registry
from hub.maintenance import collect_garbage, verify_store
from hub.remote import RemoteRegistry
from hub.tokens import create_token
from schemas.errors import HubError, IndexUnavailable
from tests.hub.server.live import free_port, start_server
from tests.s3 import start_weed

ROOT = Path(__file__).resolve().parents[2]


def test_the_store_stopping_mid_upload_is_a_retryable_error(
    tmp_path, hub_home, pg_url, s3_env, monkeypatch
):
    weed = start_weed(tmp_path / "weed")  # its own server: this test stops it
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", weed.endpoint)
    store_url = f"s3://{weed.create_bucket()}/blobs"
    data = os.urandom(40 * 1024 * 1024)  # three multipart parts
    digest = hashlib.sha256(data).hexdigest()
    try:
        with start_server(hub_home, db=pg_url, store=store_url) as server:
            with server.registry() as reg:
                token = create_token(reg, "w", read=[], write=["team"])
            host, port = server.url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            conn.putrequest("PUT", f"/api/hub/v1/blobs/{digest}")
            conn.putheader("Authorization", f"Bearer {token}")
            conn.putheader("Content-Length", str(len(data)))
            conn.endheaders()
            conn.send(data[: 20 * 1024 * 1024])  # one part on its way to the store
            time.sleep(1.0)
            weed.stop()
            with contextlib.suppress(OSError):  # the server answered and stopped reading
                conn.send(data[20 * 1024 * 1024 :])
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 503
            assert body["error"]["code"] == "store_unavailable"
            assert body["error"]["message"].startswith(
                f"blob store {store_url[: store_url.index('/blobs')]}/blobs is unavailable ("
            )
            conn.close()

            # The store comes back (same data, same endpoint): nothing of the upload is
            # visible, the registry is healthy, and the upload sent again is stored.
            weed = start_weed(tmp_path / "weed", ports=weed.ports)
            with server.registry() as reg:
                assert not reg.store.has(digest)
                assert verify_store(reg).healthy
            stored = RemoteRegistry(server.url, token)._request(
                "PUT", f"/api/hub/v1/blobs/{digest}", body=data
            )
            assert json.loads(stored.read()) == {
                "sha256": digest,
                "size": len(data),
                "stored": True,
            }
            with server.registry() as reg:
                assert reg.store.read_bytes(digest) == data
    finally:
        weed.stop()


def _serve(home: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--home", str(home), "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=2).close()
            return process
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.1)


def _waiting_on_a_lock(pg_url: str) -> bool:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


def test_a_worker_killed_inside_a_commit_leaves_no_half_version(
    tmp_path, hub_home, pg_url, s3_store_url, adapters
):
    env = {**os.environ, "HUB_DATABASE_URL": pg_url, "HUB_STORE_URL": s3_store_url}
    with Registry(hub_home, db=pg_url, store=s3_store_url) as reg:
        token = create_token(reg, "w", read=["team"], write=["team"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(hub_home, env, port)
    try:
        lora = adapters("lora")
        first, _ = RemoteRegistry(url, token).push(lora, name="team/x")
        second = tmp_path / "second"
        shutil.copytree(lora, second)
        (second / "README.md").write_text("# the second version\n")

        # Hold the repository's row, so the worker's commit transaction stops inside itself
        # (uploads done, the transaction begun and waiting for the row), then SIGKILL it.
        errors: list[BaseException] = []
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT 1 FROM repos WHERE repo = 'team/x' FOR UPDATE")

            def push() -> None:
                try:
                    RemoteRegistry(url, token).push(second, name="team/x")
                except BaseException as error:
                    errors.append(error)

            pusher = threading.Thread(target=push)
            pusher.start()
            deadline = time.monotonic() + 60
            while not _waiting_on_a_lock(pg_url):
                assert time.monotonic() < deadline, "the commit never reached the database"
                time.sleep(0.05)
            os.kill(server.pid, signal.SIGKILL)
            server.wait(10)
            pusher.join(60)
            holder.rollback()
        assert len(errors) == 1 and isinstance(errors[0], HubError)
        message = str(errors[0])  # RemoteDisconnected or a reset, as the kill falls
        assert message.startswith(f"cannot reach the hub at {url}: the connection was lost (")
        assert message.endswith("); retry")

        with Registry(hub_home, db=pg_url, store=s3_store_url) as reg:
            assert [c.version for c in reg.versions("team/x")] == [1]
            assert reg.show("team/x").commit == first.commit
            assert verify_store(reg).healthy
            report = collect_garbage(reg, upload_grace=timedelta(0))
            # Only the new README uploaded for the commit that never happened was an orphan.
            assert report.blobs_removed == 1
            out = tmp_path / "pulled"
            reg.pull("team/x", out)
            for f in first.files:
                assert (out / f.path).read_bytes() == (lora / f.path).read_bytes()

        # The worker restarted, the push sent again: the next version, dense.
        server = _serve(hub_home, env, port)
        again, _ = RemoteRegistry(url, token).push(second, name="team/x")
        assert again.version == 2
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(10)


def test_postgres_restarting_under_load_loses_nothing(tmp_path, s3_store_url, adapters):
    from tests.backends import _embedded_server, _upgrade

    (tmp_path / "pg").mkdir()
    with _embedded_server(tmp_path / "pg") as pg:  # its own server: this test restarts it
        db = pg.url(pg.create_database())
        _upgrade(db)
        with start_server(tmp_path / "home", db=db, store=s3_store_url) as server:
            with server.registry() as reg:
                token = create_token(reg, "w", read=["team"], write=["team"])
            remote = RemoteRegistry(server.url, token)
            lora = adapters("lora")
            remote.push(lora, name="team/x")
            stop = threading.Event()
            retried: list[str] = []
            unexpected: list[BaseException] = []
            pushed: dict[int, str] = {}

            def puller() -> None:
                while not stop.is_set():
                    try:
                        remote.show("team/x")
                        remote.pull("team/x@v1", tmp_path / f"pull-{threading.get_ident()}")
                    except IndexUnavailable as error:
                        retried.append(str(error))
                    except BaseException as error:
                        unexpected.append(error)
                        return
                    finally:
                        shutil.rmtree(tmp_path / f"pull-{threading.get_ident()}", True)

            def pusher() -> None:
                folder = tmp_path / "pushing"
                shutil.copytree(lora, folder)
                n = 0
                while not stop.is_set():
                    n += 1
                    (folder / "README.md").write_text(f"# push {n}\n")
                    while True:  # the same content again until it lands
                        try:
                            card, _ = remote.push(folder, name="team/x")
                            pushed[card.version] = card.commit
                            break
                        except IndexUnavailable as error:
                            retried.append(str(error))
                            time.sleep(0.1)
                        except BaseException as error:
                            unexpected.append(error)
                            return

            threads = [threading.Thread(target=puller) for _ in range(3)]
            threads.append(threading.Thread(target=pusher))
            for thread in threads:
                thread.start()
            time.sleep(2)
            pg.restart()  # type: ignore[attr-defined]
            time.sleep(3)
            stop.set()
            for thread in threads:
                thread.join(120)
            assert unexpected == []
            assert all("PostgreSQL" in message or "database" in message for message in retried)
            with server.registry() as reg:
                versions = reg.versions("team/x")
                assert [c.version for c in versions] == list(range(1, len(versions) + 1))
                assert {c.version: c.commit for c in versions if c.version in pushed} == pushed
                assert len(pushed) >= 2  # pushes went on after the restart
                assert verify_store(reg).healthy


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("HUB_DISABLE_PROGRESS", "1")
