"""`hub verify --rebuild`: the composite recomputed from its recipe matches within the rounding
bound on other kernels and thread counts, and a composite that is not what its recipe
computes is reported, naming the file and module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from cli.main import cli
from compose.reproduce import TOLERANCE
from tests.factories import make_adapter

# Rebuilds read the composite's inputs from the store: on both deployments.
pytestmark = pytest.mark.usefixtures("deployment")

ROOT = Path(__file__).resolve().parents[2]
MODULE = "model.layers.0.self_attn.q_proj"
B_KEY = f"base_model.model.{MODULE}.lora_B.weight"
RECIPES = {
    "t/svd": {"operator": "svd", "rank": 6, "weights": [0.6, 0.4]},
    "t/ties": {"operator": "ties", "density": 0.4, "rank": 6, "weights": [1.0, 0.5]},
    "t/ia3": {"operator": "linear", "weights": [0.7, 0.3]},
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("rebuild-inputs")
    return {
        "a": make_adapter("lora", root / "a", base_dir, seed=21),
        "b": make_adapter("lora", root / "b", base_dir, seed=22, r=4, lora_alpha=8),
        "ia3": make_adapter("ia3", root / "ia3", base_dir, seed=23),
        "ia3b": make_adapter("ia3", root / "ia3b", base_dir, seed=24),
    }


@pytest.fixture
def reg(registry, folders):
    for name, folder in folders.items():
        registry.push(folder, name=f"t/{name}")
    for name, recipe in RECIPES.items():
        inputs = ["t/ia3", "t/ia3b"] if name == "t/ia3" else ["t/a", "t/b"]
        registry.compose({**recipe, "name": name, "inputs": inputs})
    return registry


def _tampered(reg, tmp_path, change) -> str:
    """Push the pulled t/svd, changed by ``change(tensors)``, under the same recipe and inputs
    (what a hand-edited or corrupted-then-re-pushed composite looks like)."""
    card = reg.show("t/svd")
    folder = reg.pull("t/svd", tmp_path / "tampered")
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(weights)
    change(tensors)
    weights.unlink()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    _rename_readme(folder, "t/tampered")
    return reg.push(folder, name="t/tampered", lineage=card.lineage).card.ref


def _rename_readme(folder, name):
    """The README names the result; a rebuild of ``name`` writes that name."""
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("# t/svd\n", f"# {name}\n"))


def test_the_card_says_how_a_rebuild_is_checked(reg):
    card = reg.show("t/svd")
    assert card.details["rebuild_check"] == TOLERANCE
    assert card.details["built_with"] == {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    # Pulled next to the registry: a pull into the registry's own folder is refused.
    pulled = reg.pull("t/svd", reg.home.parent / "pulled")
    assert "within the rounding bound" in (pulled / "README.md").read_text()


@pytest.mark.parametrize(
    "env",
    [
        {"ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"},
        {"OMP_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE"},
    ],
    ids=["portable-kernels-1-thread", "mkl-compatible-2-threads"],
)
def test_a_rebuild_with_other_kernels_and_threads_verifies(reg, hub_home, env):
    # Composed here with this CPU's kernels (AVX2/AVX-512) and its thread count; rebuilt in
    # another process on ATen's portable kernels with one thread, or with MKL's conditional
    # numerical reproducibility mode: other roundings, the same adapters within the bound.
    code = (
        "import json, sys, torch\n"
        "import os\n"
        "from hub import Registry\n"
        "env = os.environ.get\n"
        "reg = Registry(sys.argv[1], db=env('HUB_DATABASE_URL'), store=env('HUB_STORE_URL'))\n"
        "out = {'capability': torch.backends.cpu.get_cpu_capability(),"
        " 'threads': torch.get_num_threads()}\n"
        "for ref in sys.argv[2:]:\n"
        "    r = reg.rebuild(ref)\n"
        "    out[ref] = [r.matches, r.max_bound_fraction, r.identical]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(hub_home), *RECIPES],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    if "ATEN_CPU_CAPABILITY" in env:
        assert report["capability"] == "DEFAULT"
    assert report["threads"] == int(env["OMP_NUM_THREADS"])
    for ref in RECIPES:
        matches, fraction, _ = report[ref]
        assert matches and fraction <= 1.0, (ref, report[ref])
    print(report)


def test_a_change_within_the_rounding_bound_verifies_and_says_so(reg, tmp_path):
    def last_bit(tensors):  # every value of one factor one fp32 step away, as a kernel may
        b = tensors[B_KEY]
        tensors[B_KEY] = torch.nextafter(b, torch.full_like(b, float("inf")))

    ref = _tampered(reg, tmp_path, last_bit)
    report = reg.rebuild(ref)
    assert report.matches and not report.identical
    assert report.differing == []
    weights = next(f for f in report.files if f.path == "adapter_model.safetensors")
    assert weights.status == "within_bound" and weights.tensors_checked == 4  # 2 layers x (q, v)
    assert 0 < report.max_bound_fraction < 0.5  # one step on one factor: under 2u of 8u
    result = CliRunner().invoke(cli, ["verify", "--rebuild", "t/tampered"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Rebuilt {ref}: matches within the rounding bound (2 files identical; 4 tensors in"
        f" adapter_model.safetensors differ by at most {report.max_relative:.1e} relative,"
        f" {report.max_bound_fraction:.0%} of the bound).\n"
    )


def test_a_change_beyond_the_bound_is_reported(reg, tmp_path):
    stored = load_file(reg.pull("t/svd", tmp_path / "svd") / "adapter_model.safetensors")

    def scale(tensors):  # 1e-5 relative: 40 times fp32's rounding, far under any visible change
        tensors[B_KEY] = tensors[B_KEY] * (1 + 1e-5)

    ref = _tampered(reg, tmp_path, scale)
    report = reg.rebuild(ref)
    assert not report.matches
    assert report.differing == ["adapter_model.safetensors"]
    (failure,) = next(f for f in report.files if f.path == "adapter_model.safetensors").failures
    assert failure["name"] == f"{MODULE} (B·A)"
    assert failure["relative"] == pytest.approx(1e-5, rel=1e-2)
    a = stored[B_KEY.replace("lora_B", "lora_A")].double()
    b = stored[B_KEY].double()
    bound = 8 * 2.0**-24 * float(a.norm() * b.norm()) / float(torch.linalg.matrix_norm(b @ a))

    result = CliRunner().invoke(cli, ["verify", "--rebuild", "t/tampered"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: rebuilding {ref} does not reproduce it: adapter_model.safetensors (1 of 4"
        f" tensors beyond the bound; worst {MODULE} (B·A): relative difference"
        f" {failure['relative']:.2e}, bound {bound:.2e}). The stored composite is not what its"
        " recipe and inputs compute\n"
    )
    as_json = json.loads(
        CliRunner().invoke(cli, ["verify", "--rebuild", "t/tampered", "--json"]).stdout
    )
    assert as_json["matches"] is False and as_json["differing"] == ["adapter_model.safetensors"]
    assert as_json["tolerance"] == TOLERANCE


def test_a_changed_config_is_reported_byte_for_byte(reg, tmp_path):
    card = reg.show("t/svd")
    folder = reg.pull("t/svd", tmp_path / "config")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_dropout": 0.1}))
    _rename_readme(folder, "t/config")
    ref = reg.push(folder, name="t/config", lineage=card.lineage).card.ref
    result = CliRunner().invoke(cli, ["verify", "--rebuild", "t/config"])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: rebuilding {ref} does not reproduce it: adapter_config.json (bytes differ)."
        " The stored composite is not what its recipe and inputs compute\n"
    )
