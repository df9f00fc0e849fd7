"""The S3 blob store (hub/blobstore/s3.py) against a real S3 server (SeaweedFS, tests/s3.py):
what only this backend has — multipart uploads, presigned URLs, the local cache, the store's
own trouble — and the registry and CLI running on it."""

import hashlib
import json
import os
import urllib.request

import pytest
from click.testing import CliRunner

from cli.main import cli
from hub.blobstore import open_store
from hub.blobstore.s3 import PART, S3BlobStore
from hub.registry import Registry
from schemas.errors import InvalidArgument, StoreCorrupted, StoreUnavailable

BIG = os.urandom(1024) * (2 * PART // 1024 + 300)  # two whole parts and a bit


def _uploads(store):
    return store.uploads_in_progress()


def test_a_large_blob_goes_up_in_parts_and_appears_only_when_verified(tmp_path, s3_store_url):
    store = open_store(s3_store_url, tmp_path)
    digest = hashlib.sha256(BIG).hexdigest()
    with store.writer(expected=digest) as blob:
        for start in range(0, len(BIG), 3 * 1024 * 1024):
            blob.write(BIG[start : start + 3 * 1024 * 1024])
        assert not store.has(digest)
        assert [u["Key"] for u in _uploads(store)] == [store.key(digest)]  # under way
        blob.publish()
    assert store.size(digest) == len(BIG)
    with store.open(digest, PART - 5, PART + 5) as fh:
        assert fh.read() == BIG[PART - 5 : PART + 5]
    assert hashlib.sha256(store.read_bytes(digest)).hexdigest() == digest
    assert _uploads(store) == []

    # The same parts under a wrong claim: refused, and the upload aborted.
    wrong = hashlib.sha256(b"a different file").hexdigest()
    with pytest.raises(InvalidArgument), store.writer(expected=wrong) as blob:
        blob.write(BIG)
        blob.publish()
    assert not store.has(wrong)
    assert _uploads(store) == []
    assert list(store.iter_digests()) == [digest]


def test_a_file_is_hashed_then_sent_once(tmp_path, s3_store_url):
    store = open_store(s3_store_url, tmp_path / "home")
    src = tmp_path / "w.bin"
    src.write_bytes(BIG)
    digest = hashlib.sha256(BIG).hexdigest()
    assert store.put_file(src) == (digest, len(BIG))
    written = store.client.head_object(Bucket=store.bucket, Key=store.key(digest))
    assert store.put_file(src) == (digest, len(BIG))  # stored already: nothing sent
    again = store.client.head_object(Bucket=store.bucket, Key=store.key(digest))
    assert again["ETag"] == written["ETag"]
    key = store.key(digest)
    assert key == f"{s3_store_url.split('/', 3)[3]}/sha256/{digest[:2]}/{digest}"
    assert key.endswith(f"/blobs/sha256/{digest[:2]}/{digest}")


def test_presigned_urls_serve_the_blob_and_its_ranges(tmp_path, s3_store_url):
    store = open_store(s3_store_url, tmp_path)
    digest, _ = store.put_bytes(b"0123456789")
    url = store.download_url(digest, expires=60)
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Expires=60" in url
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"0123456789"
    ranged = urllib.request.Request(url, headers={"Range": "bytes=3-5"})
    with urllib.request.urlopen(ranged) as response:
        assert (response.status, response.read()) == (206, b"345")


def test_materialize_fills_the_cache_once_and_links_to_it(tmp_path, s3_store_url):
    store = open_store(s3_store_url, tmp_path)
    digest, _ = store.put_bytes(b"weights")
    with store.materialize({"a/w.bin": digest}) as folder:
        link = folder / "a" / "w.bin"
        assert link.read_bytes() == b"weights"
        assert os.path.realpath(link) == str(store.cache.path(digest))
        assert store.materialized_digest(link) == (digest, 7)
    # The cached copy is kept for the next use; a blob deleted from the store leaves it too.
    assert store.cache.has(digest)
    assert store.delete(digest) == 7
    assert not store.cache.has(digest)
    with pytest.raises(StoreCorrupted) as info, store.materialize({"w.bin": digest}):
        pass
    assert str(info.value) == f"blob {digest[:12]} is missing from the store (run `hub verify`)"


def test_a_corrupted_object_is_caught_on_the_way_out(tmp_path, s3_store_url):
    store = open_store(s3_store_url, tmp_path)
    digest, _ = store.put_bytes(b"the real bytes")
    store.client.put_object(Bucket=store.bucket, Key=store.key(digest), Body=b"rotten")
    assert store.check(digest) == "corrupted"
    with pytest.raises(StoreCorrupted) as info:
        store.fetch(digest)
    assert str(info.value) == (
        f"blob {digest[:12]} in {store.location} is corrupted: its bytes no longer match"
        " their sha256 (run `hub verify`)"
    )
    assert not store.cache.has(digest)
    with pytest.raises(StoreCorrupted):
        store.copy_out(digest, tmp_path / "out.bin")


def test_clear_tmp_leaves_live_multipart_uploads_alone(tmp_path, s3_store_url):
    store = open_store(s3_store_url, tmp_path)
    digest = hashlib.sha256(BIG).hexdigest()
    with store.writer(expected=digest) as blob:
        blob.write(BIG[: PART + 1])
        store.clear_tmp()  # begun seconds ago: a live writer's
        assert len(_uploads(store)) == 1
        blob.write(BIG[PART + 1 :])
        blob.publish()
    assert store.has(digest)


def test_store_urls_and_unreachable_stores_get_one_clear_line(tmp_path, s3_env, monkeypatch):
    with pytest.raises(InvalidArgument) as info:
        open_store("s3://", tmp_path)
    assert str(info.value) == (
        "--store 's3://': an s3:// store URL names a bucket (s3://BUCKET[/PREFIX];"
        " 3-63 lowercase letters, digits, '.', '-')"
    )
    missing_bucket = open_store("s3://no-such-bucket-here/x", tmp_path)
    with pytest.raises(StoreUnavailable) as info:
        missing_bucket.put_bytes(b"x")
    assert str(info.value).startswith("blob store s3://no-such-bucket-here/x is unavailable (")
    assert str(info.value).endswith(
        "check --store / HUB_STORE_URL and the AWS settings, then retry (nothing was changed)"
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens
    down = open_store("s3://any-bucket", tmp_path)
    with pytest.raises(StoreUnavailable) as info:
        down.has("0" * 64)
    assert str(info.value) == (
        "blob store s3://any-bucket is unavailable (Could not connect to the endpoint URL:"
        ' "http://127.0.0.1:9/any-bucket/sha256/00/' + "0" * 64 + '"): check --store /'
        " HUB_STORE_URL and the AWS settings, then retry (nothing was changed)"
    )


def test_the_registry_runs_on_s3(tmp_path, s3_store_url, adapters):
    lora = adapters("lora")
    with Registry(tmp_path / "home", store=s3_store_url) as registry:
        assert isinstance(registry.store, S3BlobStore)
        card = registry.push(lora, name="team/s3-lora", tasks=["sql"]).card
        out = tmp_path / "pulled"
        registry.pull("team/s3-lora", out)
        for f in card.files:
            assert (out / f.path).read_bytes() == (lora / f.path).read_bytes()
        keys = {
            o["Key"]
            for o in registry.store.client.list_objects_v2(
                Bucket=registry.store.bucket, Prefix=registry.store.prefix
            )["Contents"]
        }
        assert {registry.store.key(f.sha256) for f in card.files} <= keys
    # Nothing of the blobs under --home but the cache.
    assert not (tmp_path / "home" / "store").exists()


def test_every_registry_command_takes_store(tmp_path, s3_store_url, adapters):
    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    lora = str(adapters("lora"))
    assert (
        runner.invoke(
            cli, [*home, "push", lora, "--name", "team/a", "--store", s3_store_url]
        ).exit_code
        == 0
    )
    # The same store from the variable, before the command, and after it.
    env = {"HUB_STORE_URL": s3_store_url}
    listed = runner.invoke(cli, [*home, "ls", "--json"], env=env)
    assert [row["repo"] for row in json.loads(listed.output)] == ["team/a"]
    verified = runner.invoke(cli, [*home, "--store", s3_store_url, "verify", "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["healthy"] is True
    assert runner.invoke(cli, [*home, "rm", "team/a", "--store", s3_store_url]).exit_code == 0
    store = open_store(s3_store_url, tmp_path / "home")
    stored = len(list(store.iter_digests()))
    collected = runner.invoke(cli, [*home, "gc", "--json", "--store", s3_store_url])
    assert collected.exit_code == 0, collected.output
    assert (stored, json.loads(collected.output)["blobs_removed"]) == (3, 3)
    assert list(store.iter_digests()) == []
    # Without --store the embedded folder is used, untouched by all of the above.
    assert json.loads(runner.invoke(cli, [*home, "ls", "--json"]).output) == []
