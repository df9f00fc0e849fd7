"""hub compare on LoHa, LoKr, IA3, OFT and BOFT next to LoRA: weight cosines, distances and
spectra against dense math on PEFT's own merged weights (merge_and_unload minus the base)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli.main import cli
from tests.factories import load_base, make_adapter, make_base

METHODS = ("lora", "loha", "lokr", "ia3", "oft", "boft")


def _peft_deltas(base, folder):
    """module -> merged weight minus base weight, both from PEFT's merge_and_unload in fp32."""
    from peft import PeftModel

    model = load_base(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    out = {}
    for name, weight in merged.named_parameters():
        delta = (weight.detach() - before[name]).double()
        if name.endswith(".weight") and bool(delta.any()):
            out[name.removesuffix(".weight")] = delta
    return out


def _cosine(first, second):
    dot = sum(float((first[m] * second[m]).sum()) for m in set(first) & set(second))
    sq1 = sum(float((d * d).sum()) for d in first.values())
    sq2 = sum(float((d * d).sum()) for d in second.values())
    return dot / (sq1 * sq2) ** 0.5, dot, sq1, sq2


def _push_all(runner, folders):
    for method, folder in folders.items():
        result = runner.invoke(cli, ["push", str(folder), "--name", f"t/{method}"])
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("method", ["ia3", "oft", "boft"])
def test_base_deltas_equal_peft_merge(adapters, base_dir, method):
    from compose.base_deltas import base_deltas

    folder = adapters(method)
    expected = _peft_deltas(base_dir, folder)
    got = base_deltas(folder, method, base_dir, f"t/{method}")
    assert sorted(got) == sorted(expected)
    for module, delta in expected.items():
        assert got[module].dtype == torch.float32 and got[module].shape == delta.shape
        # The reference is fp32 W' - W: its rounding of W' is the bound.
        assert float((got[module].double() - delta).abs().max()) <= 1e-5 * float(delta.abs().max())


def test_compare_every_weight_method_against_peft_merges(hub_home, adapters, base_dir):
    folders = {m: adapters(m) for m in METHODS}
    runner = CliRunner()
    _push_all(runner, folders)
    result = runner.invoke(cli, ["compare", *(f"t/{m}" for m in METHODS), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    sim = report["similarity"]
    assert (sim["skipped"], sim["notes"], sim["not_comparable"]) == ({}, {}, {})

    deltas = {m: _peft_deltas(base_dir, folder) for m, folder in folders.items()}
    for i, a in enumerate(METHODS):
        for j, b in enumerate(METHODS):
            cos, dot, sq1, sq2 = _cosine(deltas[a], deltas[b])
            assert sim["cosine"][i][j] == pytest.approx(cos, abs=1e-5), (a, b)
            distance = max(sq1 + sq2 - 2 * dot, 0.0) ** 0.5 / (sq1**0.5 + sq2**0.5)
            assert sim["relative_distance"][i][j] == pytest.approx(distance, abs=1e-5), (a, b)
    refs = sim["refs"]
    pair = f"{refs[METHODS.index('lora')]} | {refs[METHODS.index('ia3')]}"
    shared = sorted(set(deltas["lora"]) & set(deltas["ia3"]))
    assert sorted(sim["per_module"][pair]) == shared  # v_proj of both layers
    for module in shared:
        cos, _, _, _ = _cosine({module: deltas["lora"][module]}, {module: deltas["ia3"][module]})
        assert sim["per_module"][pair][module] == pytest.approx(cos, abs=1e-5)
        angles = sim["principal_angles"][pair][module]
        assert len(angles["columns"]) == 8  # the LoRA's rank: IA3's (l - 1) * W is full rank

    for method in ("ia3", "oft", "boft", "loha"):
        spectra = report["spectra"][refs[METHODS.index(method)]]
        assert sorted(spectra) == sorted(deltas[method])
        for module, delta in deltas[method].items():
            expected = torch.linalg.svdvals(delta)[:4].tolist()
            assert spectra[module]["singular_values"][:4] == pytest.approx(expected, rel=1e-4)


def test_compare_without_the_base(hub_home, tmp_path):
    """The base folder is gone: OFT is skipped, IA3 falls back to its (l - 1) vectors (compared
    with the other IA3 only, no fake spectra or angles), every IA3/LoRA pair is noted, and the
    report still comes out."""
    base = make_base(tmp_path / "gone-base")
    folders = {
        "lora": make_adapter("lora", tmp_path / "lora", base),
        "ia3": make_adapter("ia3", tmp_path / "ia3", base),
        "ia3b": make_adapter("ia3", tmp_path / "ia3b", base, seed=2),
        "oft": make_adapter("oft", tmp_path / "oft", base),
    }
    runner = CliRunner()
    _push_all(runner, folders)
    kept = shutil.copytree(base, tmp_path / "kept-base")
    shutil.rmtree(base)
    names = [f"t/{m}" for m in folders]
    result = runner.invoke(cli, ["compare", *names, "--json"])
    assert result.exit_code == 0, result.output
    sim = json.loads(result.stdout)["similarity"]
    lora, ia3, ia3b, oft = sim["refs"]
    gone = f"was trained on {str(base)!r}, which is not a folder here: give --base DIR (a local"
    gone += " copy of the base model, or a registry reference)"
    assert sim["skipped"] == {
        oft: "oft rotates the base weight, so its weight delta needs the base model, which is"
        f" not available: {oft} {gone}"
    }
    assert sim["notes"] == {
        ref: "IA3 compared through its (l - 1) vectors, with other IA3 adapters only: its weight"
        f" delta (l - 1) * W needs the base model, which is not available: {ref} {gone}"
        for ref in (ia3, ia3b)
    }
    why = (
        "IA3 scaling vectors (l - 1) and weight deltas are not comparable without the base weight"
        " (IA3's delta is (l - 1) * W); give --base DIR (the base model) to compare their weight"
        " deltas"
    )
    assert sim["not_comparable"] == {f"{lora} | {ia3}": why, f"{lora} | {ia3b}": why}
    assert sim["cosine"][0] == [1.0, None, None, None]

    vectors = [load_file(str(folders[m] / "adapter_model.safetensors")) for m in ("ia3", "ia3b")]
    first, second = ({k: v.double() - 1 for k, v in t.items()} for t in vectors)
    expected, _, _, _ = _cosine(first, second)
    assert sim["cosine"][1][2] == pytest.approx(expected, abs=1e-12)
    pair = f"{ia3} | {ia3b}"
    angles = sim["principal_angles"][pair]
    assert len(angles) == 6 and all(a == {"columns": [], "rows": []} for a in angles.values())
    spectra = json.loads(result.stdout)["spectra"]
    assert spectra[ia3] == {} and spectra[ia3b] == {}  # no rank-1 spectrum of a vector
    assert len(spectra[lora]) == 4

    text = runner.invoke(cli, ["compare", *names])
    assert text.exit_code == 0, text.output
    assert f"  t/lora vs t/ia3: {why}\n" in text.stdout
    assert f"  t/oft: {sim['skipped'][oft]}\n" in text.stdout

    result = runner.invoke(cli, ["compare", *names, "--base", str(kept), "--json"])
    assert result.exit_code == 0, result.output
    sim = json.loads(result.stdout)["similarity"]
    assert (sim["skipped"], sim["notes"], sim["not_comparable"]) == ({}, {}, {})
    assert all(v is not None for row in sim["cosine"] for v in row)


def test_compare_ia3_next_to_lora_with_data(hub_home, trained, tmp_path):
    """The command that exited 1 ("differ in shape ((64, 128) vs (1, 128))"): with the base,
    IA3's (l - 1) * W is compared with the LoRA's delta, and output similarity runs."""
    base, lora, _, data = trained
    ia3 = make_adapter("ia3", tmp_path / "ia3", base)
    runner = CliRunner()
    _push_all(runner, {"lora": lora, "ia3": ia3})
    args = ["compare", "t/lora", "t/ia3", "--data", str(data), "--base", str(base), "--json"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    cos, _, _, _ = _cosine(_peft_deltas(base, lora), _peft_deltas(base, ia3))
    assert report["similarity"]["cosine"][0][1] == pytest.approx(cos, abs=1e-5)
    outputs = report["output_similarity"]
    assert outputs["refs"] == report["similarity"]["refs"]
    assert outputs["top1_agreement"][0][0] == 1.0
