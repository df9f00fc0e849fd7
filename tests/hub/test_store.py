import hashlib
import os

import pytest

from hub.store import BlobStore, sha256_file
from schemas import StoreCorrupted


def test_put_file_stores_by_sha256_and_dedups(tmp_path):
    store = BlobStore(tmp_path / "store")
    src = tmp_path / "a.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    digest, size = store.put_file(src)
    assert digest == hashlib.sha256(data).hexdigest()
    assert size == len(data)
    assert store.path(digest).read_bytes() == data
    assert store.path(digest) == tmp_path / "store/blobs/sha256" / digest[:2] / digest
    mtime = store.path(digest).stat().st_mtime_ns
    assert store.put_file(src) == (digest, size)
    assert store.path(digest).stat().st_mtime_ns == mtime  # nothing rewritten
    assert list(store.iter_digests()) == [digest]
    assert not any(store.tmp.iterdir())


def test_put_bytes_and_copy_out_checks_digest(tmp_path):
    store = BlobStore(tmp_path / "store")
    digest, _ = store.put_bytes(b"hello")
    out = tmp_path / "out"
    store.copy_out(digest, out)
    assert out.read_bytes() == b"hello"
    blob = store.path(digest)
    blob.chmod(0o644)
    blob.write_bytes(b"hellp")
    with pytest.raises(StoreCorrupted) as info:
        store.copy_out(digest, tmp_path / "out2")
    assert str(info.value) == (
        f"blob {digest[:12]} is corrupted: its bytes no longer match their sha256"
        " (run `hub verify`)"
    )
    assert store.check(digest) == "corrupted"
    blob.unlink()
    assert store.check(digest) == "missing"


@pytest.mark.parametrize("digest", ["../../etc/passwd", "ab", "A" * 64, "g" * 64])
def test_digests_never_name_paths_outside_the_store(tmp_path, digest):
    with pytest.raises(StoreCorrupted):
        BlobStore(tmp_path).path(digest)


def test_sha256_file_matches_hashlib(tmp_path):
    src = tmp_path / "x"
    src.write_bytes(b"abc" * 1000)
    assert sha256_file(src) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_clear_tmp_and_delete(tmp_path):
    store = BlobStore(tmp_path)
    store.tmp.mkdir(parents=True)
    (store.tmp / "x.incomplete").write_bytes(b"12345")
    assert store.clear_tmp() == 5
    digest, _ = store.put_bytes(b"abc")
    assert store.delete(digest) == 3
    assert store.delete(digest) == 0
