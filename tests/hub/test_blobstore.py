"""The blob store interface (hub/blobstore/base.py), on each backend: the local folder and a
real S3 server (tests/s3.py). Backend-specific behaviour: tests/hub/test_blobstore_s3.py."""

import hashlib
import os
import time

import pytest

from hub.blobstore import open_store
from hub.blobstore.local import LocalBlobStore
from hub.blobstore.s3 import S3BlobStore
from schemas import StoreCorrupted
from schemas.errors import InvalidAdapter, InvalidArgument

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def store(tmp_path, store_url):
    return open_store(store_url, tmp_path / "home")


def _leftovers(store):
    """Whatever the store keeps besides its blobs (temp files, scratch folders, multipart
    uploads under way)."""
    local = store.cache if isinstance(store, S3BlobStore) else store
    names = sorted(p.name for p in local.tmp.iterdir()) if local.tmp.exists() else []
    if isinstance(store, S3BlobStore):
        uploads = store.uploads_in_progress()
        names += sorted(upload["Key"] for upload in uploads)
    return names


def _written_at(store, digest):
    if isinstance(store, S3BlobStore):
        return store.client.head_object(Bucket=store.bucket, Key=store.key(digest))["LastModified"]
    return store.local_path(digest).stat().st_mtime_ns


def test_open_store_defaults_to_the_folder_under_home(tmp_path):
    store = open_store(None, tmp_path)
    assert isinstance(store, LocalBlobStore)
    assert store.location == str(tmp_path / "store")
    other = open_store(f"file://{tmp_path}/elsewhere", tmp_path)
    assert other.location == str(tmp_path / "elsewhere")


def test_open_store_refuses_an_unknown_scheme_naming_the_option(tmp_path):
    with pytest.raises(InvalidArgument) as info:
        open_store("gs://bucket/blobs", tmp_path)
    assert str(info.value) == (
        "--store 'gs://bucket/blobs' (or HUB_STORE_URL): unknown store scheme 'gs'; known:"
        " file://, s3://, or leave it unset for the folder under --home"
    )
    with pytest.raises(InvalidArgument) as info:
        open_store("file://relative/path", tmp_path)
    assert str(info.value) == (
        "--store 'file://relative/path': a file:// store URL names an absolute folder"
        " (file:///srv/blobs)"
    )


def test_size_and_ranged_open(store):
    digest, size = store.put_bytes(DATA)
    assert (size, store.size(digest)) == (len(DATA), len(DATA))
    with store.open(digest) as fh:
        assert fh.read() == DATA
    with store.open(digest, 1000) as fh:
        assert fh.read() == DATA[1000:]
    with store.open(digest, 1000, 1010) as fh:
        assert fh.read(4) == DATA[1000:1004]
        assert fh.read() == DATA[1004:1010]
    with store.open(digest, 10_000, 99_999) as fh:  # past the end: up to the end
        assert fh.read() == DATA[10_000:]
    assert store.read_bytes(digest) == DATA


def test_reading_a_missing_blob_names_it(store):
    digest = hashlib.sha256(b"never stored").hexdigest()
    for read in (store.size, store.open, store.read_bytes):
        with pytest.raises(StoreCorrupted) as info:
            read(digest)
        assert str(info.value) == (
            f"blob {digest[:12]} is missing from the store (run `hub verify`)"
        )
    with pytest.raises(StoreCorrupted):
        store.open("../../etc/passwd")


def test_writer_publishes_only_a_matching_digest(store):
    digest = hashlib.sha256(DATA).hexdigest()
    with store.writer(expected=digest, limit=len(DATA)) as blob:
        blob.write(DATA[:100])
        blob.write(memoryview(DATA)[100:])
        assert not store.has(digest)  # nothing visible before publish
        assert blob.publish() == (digest, len(DATA))
    assert store.read_bytes(digest) == DATA
    assert _leftovers(store) == []

    wrong = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(InvalidArgument) as info, store.writer(expected=wrong) as blob:
        blob.write(b"these bytes")
        blob.publish()
    assert str(info.value) == (
        f"uploaded bytes hash to {hashlib.sha256(b'these bytes').hexdigest()[:12]},"
        f" not {wrong[:12]}: refused"
    )
    assert sorted(store.iter_digests()) == [digest]
    assert _leftovers(store) == []


def test_writer_over_its_limit_or_left_unpublished_leaves_nothing(store):
    with pytest.raises(InvalidArgument) as info, store.writer(limit=10) as blob:
        blob.write(b"123456")
        blob.write(b"789012")
    assert str(info.value) == "upload over 10 bytes"
    assert info.value.context == {"status": 413}
    with store.writer() as blob:
        blob.write(b"abandoned")
    assert list(store.iter_digests()) == []
    assert _leftovers(store) == []


def test_writer_of_a_stored_digest_stores_nothing_new(store):
    digest, _ = store.put_bytes(DATA)
    written = _written_at(store, digest)
    time.sleep(1.1)  # S3 keeps the time of a write to the second
    with store.writer(expected=digest) as blob:
        blob.write(DATA)
        assert blob.publish() == (digest, len(DATA))
    assert _written_at(store, digest) == written
    assert _leftovers(store) == []


def test_materialize_in_a_scratch_folder_of_its_own(store):
    one, _ = store.put_bytes(b"one")
    two, _ = store.put_bytes(b"two")
    with store.materialize({"a.txt": one, "sub/dir/b.txt": two}) as folder:
        assert (folder / "a.txt").read_bytes() == b"one"
        assert (folder / "sub/dir/b.txt").read_bytes() == b"two"
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.txt")) == [
            "a.txt",
            "sub/dir/b.txt",
        ]
    assert not folder.exists()
    assert _leftovers(store) == []


def test_materialize_into_a_given_folder_leaves_it_to_the_caller(store, tmp_path):
    one, _ = store.put_bytes(b"one")
    with store.materialize({"x/a.txt": one}, tmp_path / "out") as folder:
        assert folder == tmp_path / "out"
    assert (tmp_path / "out/x/a.txt").read_bytes() == b"one"
    with pytest.raises(InvalidAdapter) as info, store.materialize({"../a": one}, tmp_path / "o2"):
        pass
    assert str(info.value) == "file path '../a' escapes the folder"


def test_a_materialized_link_is_pushed_without_reading_it(store, tmp_path):
    digest, _ = store.put_bytes(DATA)
    with store.materialize({"w.bin": digest}) as folder:
        assert store.materialized_digest(folder / "w.bin") == (digest, len(DATA))
        assert store.put_file(folder / "w.bin") == (digest, len(DATA))
        assert _leftovers(store) == [folder.parent.name]  # no temp file was written
    copy = tmp_path / "copy.bin"
    copy.write_bytes(DATA)
    assert store.materialized_digest(copy) is None  # an ordinary file is read and stored
    if isinstance(store, S3BlobStore):
        return
    other = LocalBlobStore(tmp_path / "other")
    os.symlink(store.local_path(digest), tmp_path / "link")
    assert other.materialized_digest(tmp_path / "link") is None  # another store's blob
    assert other.put_file(tmp_path / "link") == (digest, len(DATA))
    assert other.read_bytes(digest) == DATA


def test_clear_tmp_removes_abandoned_writes_and_spares_live_ones(store):
    if isinstance(store, S3BlobStore):
        store = store.cache  # its spooled writes (multipart uploads: test_blobstore_s3.py)
    live = store.writer()
    live.write(b"in flight")
    store.tmp.joinpath("dead.incomplete").write_bytes(b"12345")
    assert store.clear_tmp() == 5
    assert [p.name for p in store.tmp.iterdir()] == [live.tmp.name]
    digest, _ = live.publish()
    assert store.read_bytes(digest) == b"in flight"
