"""The safetensors writers: positional writes, patching a copy, and their failure paths."""

from __future__ import annotations

import errno
import os
import threading

import pytest
import torch
from safetensors import safe_open

from compose.deploy import writers
from compose.deploy.stio import read_header
from compose.deploy.writers import ShardCopier, StreamWriter

ENTRIES = [("a", "F32", (2, 3)), ("b", "BF16", (4,)), ("c", "F32", (1,))]


def write_file(path, tensors, order=None):
    writer = StreamWriter(path, [(n, dt, tuple(t.shape)) for n, (dt, t) in tensors.items()])
    for name in order or tensors:
        writer.write(name, tensors[name][1])
    writer.close()
    writer.wait()


def tensors():
    return {
        "a": ("F32", torch.arange(6, dtype=torch.float32).reshape(2, 3)),
        "b": ("BF16", torch.tensor([1.5, -2.0, 3.0, 0.25], dtype=torch.bfloat16)),
        "c": ("F32", torch.tensor([7.0])),
    }


# The writers copy bytes and compute nothing: every check here is bit equality.


def test_tensors_written_in_any_order_land_at_their_offsets(tmp_path):
    write_file(tmp_path / "x.safetensors", tensors(), order=["c", "a", "b"])
    with safe_open(tmp_path / "x.safetensors", "pt") as fh:
        for name, (_, tensor) in tensors().items():
            assert torch.equal(fh.get_tensor(name), tensor)


def test_a_patched_copy_changes_only_the_tensors_written(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    write_file(base / "x.safetensors", tensors())
    out = tmp_path / "out"
    out.mkdir()
    with ShardCopier({"x.safetensors": base / "x.safetensors"}, out) as copier:
        copy = copier.wait("x.safetensors")
        infos, _ = read_header(base / "x.safetensors")
        writer = StreamWriter.patching(copy, infos)
        writer.copy("a", infos["a"])
        writer.write("b", torch.tensor([9.0, 8.0, 7.0, 6.0], dtype=torch.bfloat16))
        writer.copy("c", infos["c"])
        writer.close()
        writer.wait()
    assert (out / "x.safetensors").stat().st_size == (base / "x.safetensors").stat().st_size
    with safe_open(out / "x.safetensors", "pt") as fh:
        assert torch.equal(fh.get_tensor("a"), tensors()["a"][1])
        assert fh.get_tensor("b").tolist() == [9.0, 8.0, 7.0, 6.0]
        assert torch.equal(fh.get_tensor("c"), tensors()["c"][1])


def test_a_tensor_never_written_is_reported_at_close(tmp_path):
    writer = StreamWriter(tmp_path / "x.safetensors", ENTRIES)
    writer.write("a", torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match=r"x\.safetensors: tensor 'b' was never written"):
        writer.close()


def test_unknown_names_and_wrong_sizes_are_refused(tmp_path):
    writer = StreamWriter(tmp_path / "x.safetensors", ENTRIES)
    with pytest.raises(RuntimeError, match="tensor 'z' is not in the header or came twice"):
        writer.write("z", torch.zeros(1))
    with pytest.raises(RuntimeError, match="tensor 'a': 4 bytes, header says 24"):
        writer.write("a", torch.zeros(1))
    writer.abort()


def test_a_failing_fsync_is_raised_by_wait_instead_of_hanging(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers.os, "fsync", full_disk)
    writer = StreamWriter(tmp_path / "x.safetensors", [("c", "F32", (1,))])
    writer.write("c", torch.zeros(1))
    writer.close()
    raised: list[BaseException] = []
    waiter = threading.Thread(target=lambda: _catch(writer.wait, raised), daemon=True)
    waiter.start()
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert isinstance(raised[0], OSError) and raised[0].errno == errno.ENOSPC


def _catch(func, into):
    try:
        func()
    except BaseException as error:
        into.append(error)


def test_a_stopped_copier_leaves_its_thread_joined(tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(1 << 20))
    out = tmp_path / "out"
    out.mkdir()
    copier = ShardCopier({"big.bin": source}, out)
    with copier:
        pass  # closed right away, as when adapter loading fails
    assert not copier._thread.is_alive()


def test_read_ahead_keeps_its_window_and_stops_when_closed(tmp_path, monkeypatch):
    from compose.deploy import stio

    hinted: list[int] = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        hinted.append(length)
        real(fd, offset, length, advice)

    monkeypatch.setattr(stio.os, "posix_fadvise", record)
    monkeypatch.setattr(stio.ReadAhead, "CHUNK", 1 << 10)
    files = []
    for i in range(3):
        files.append(tmp_path / f"shard-{i}")
        files[-1].write_bytes(os.urandom(4 << 10))
    read_ahead = stio.ReadAhead(files, window=2 << 10)
    _settle(lambda: sum(hinted) == 2 << 10)
    assert sum(hinted) == 2 << 10  # two chunks ahead of nothing consumed, then it waits
    read_ahead.advance(4 << 10)
    _settle(lambda: sum(hinted) == 6 << 10)
    assert sum(hinted) == 6 << 10
    read_ahead.close()
    read_ahead._thread.join(timeout=5)
    assert not read_ahead._thread.is_alive()


def _settle(condition, seconds=5.0):
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # and nothing more comes
