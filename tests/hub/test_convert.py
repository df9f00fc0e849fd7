"""`hub convert`: pickle adapters become safetensors only through weights_only loading."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli.main import cli
from hub.convert import convert_bin_adapter
from schemas import InvalidAdapter, UnsafeFormat


def _bin_adapter(src, dst):
    shutil.copytree(src, dst)
    tensors = load_file(dst / "adapter_model.safetensors")
    (dst / "adapter_model.safetensors").unlink()
    torch.save(tensors, dst / "adapter_model.bin")
    return dst, tensors


def test_bin_adapter_is_refused_then_converted(registry, adapters, tmp_path):
    folder, tensors = _bin_adapter(adapters("lora"), tmp_path / "old")
    with pytest.raises(UnsafeFormat):
        registry.push(folder, name="a/old")
    assert registry.search_raw() == []

    result = CliRunner().invoke(cli, ["convert", str(folder)])
    assert result.exit_code == 0, result.output
    converted = tmp_path / "old-safetensors"
    assert result.stdout == f"Wrote {converted}\n"
    assert sorted(p.name for p in converted.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    loaded = load_file(converted / "adapter_model.safetensors")
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)  # copied, not computed
    assert registry.push(converted, name="a/old").card.rank == 8


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "adapter_model.bin", "wb") as fh:
        pickle.dump({"x": _Exploit()}, fh)
    with pytest.raises(InvalidAdapter) as info:
        convert_bin_adapter(folder)
    assert str(info.value).startswith(
        f"{folder / 'adapter_model.bin'}: not a plain tensor checkpoint, refusing to load it"
    )
    assert not (tmp_path / "evil-safetensors").exists()
