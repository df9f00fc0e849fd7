"""mlx-lm and torchtune LoRA adapters: refused by push with the convert command, converted to
PEFT folders whose forward pass equals each format's own math (computed here, in fp32)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from cli.main import cli
from hub.convert import convert_adapter
from schemas import ForeignFormat, InvalidAdapter, InvalidArgument
from tests.factories import TINY_LLAMA, load_base, make_base

TOL = dict(atol=1e-5, rtol=1e-5)  # fp32 products of a few 64-wide matrices
IN_OUT = {  # Hugging Face module -> (in, out) in TINY_LLAMA (4 heads, 2 kv heads, head_dim 16)
    "self_attn.q_proj": (64, 64),
    "self_attn.k_proj": (64, 32),
    "self_attn.v_proj": (64, 32),
    "self_attn.o_proj": (64, 64),
    "mlp.gate_proj": (64, 128),
    "mlp.up_proj": (64, 128),
    "mlp.down_proj": (128, 64),
}
IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 100, 7]])


def _module(model, path):
    for part in path.split("."):
        model = getattr(model, part)
    return model


def _peft(base, folder):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base), str(folder)).eval()


def _merged_logits(base, deltas):
    """Logits of the base with ``deltas`` (HF weight name -> dW) added: the reference."""
    model = load_base(base)
    with torch.no_grad():
        for name, delta in deltas.items():
            _module(model, name).weight += delta
        return model(input_ids=IDS).logits


# -- mlx-lm ------------------------------------------------------------------------------
MLX_KEYS = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]


def _mlx_adapter(folder, base, rank=4, scale=2.5, layers=(1,), **overrides):
    """An mlx-lm ``--adapter-path`` folder as mlx_lm.lora saves it: adapters.safetensors
    (lora_a (in, r), lora_b (r, out)) and the training arguments as adapter_config.json."""
    generator = torch.Generator().manual_seed(7)
    tensors = {}
    for layer in layers:
        for key in MLX_KEYS:
            d_in, d_out = IN_OUT[key]
            prefix = f"model.layers.{layer}.{key}"
            tensors[f"{prefix}.lora_a"] = torch.randn(d_in, rank, generator=generator) * 0.2
            tensors[f"{prefix}.lora_b"] = torch.randn(rank, d_out, generator=generator) * 0.2
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapters.safetensors", metadata={"format": "mlx"})
    config = {
        "model": str(base),
        "train": True,
        "fine_tune_type": "lora",
        "data": "data/",
        "seed": 0,
        "num_layers": len(layers),
        "batch_size": 4,
        "iters": 100,
        "learning_rate": 1e-5,
        "adapter_path": str(folder),
        "save_every": 100,
        "max_seq_length": 2048,
        "grad_checkpoint": False,
        "lora_parameters": {"rank": rank, "dropout": 0.0, "scale": scale, "keys": MLX_KEYS},
        **overrides,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=4))
    return folder, tensors


def test_mlx_adapter_is_refused_then_converted_and_matches_mlx_math(base_dir, registry, tmp_path):
    folder, tensors = _mlx_adapter(tmp_path / "adapters", base_dir)
    with pytest.raises(ForeignFormat) as info:
        registry.push(folder, name="team/mlx")
    assert str(info.value) == (
        f"{folder} is an mlx-lm adapter (adapters.safetensors, fine_tune_type 'lora'), not a"
        f" PEFT folder: convert it with `hub convert {folder}`, then push the converted folder"
    )
    assert registry.search_raw() == []

    result = CliRunner().invoke(cli, ["convert", str(folder), "-o", str(tmp_path / "peft")])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"Wrote {tmp_path / 'peft'}: PEFT LoRA from mlx-lm, r=4, lora_alpha=10 (mlx-lm scale 2.5)\n"
    )
    card = registry.push(tmp_path / "peft", name="team/mlx").card
    assert (card.method, card.rank, card.alpha) == ("lora", 4, 10.0)
    assert card.target_modules == ["down_proj", "q_proj", "v_proj"]
    assert card.details["layers"] == [1]
    assert card.base_model == str(base_dir)

    model = _peft(base_dir, registry.pull("team/mlx", tmp_path / "pulled"))
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(1))
    deltas = {}
    with torch.no_grad():
        for key in MLX_KEYS:
            d_in, _ = IN_OUT[key]
            a, b = tensors[f"model.layers.1.{key}.lora_a"], tensors[f"model.layers.1.{key}.lora_b"]
            layer = _module(model.base_model.model, f"model.layers.1.{key}")
            got = layer(x[:, :d_in]) - layer.base_layer(x[:, :d_in])
            torch.testing.assert_close(got, 2.5 * (x[:, :d_in] @ a @ b), **TOL)  # mlx-lm's math
            deltas[f"model.layers.1.{key}"] = 2.5 * (a @ b).T
            assert type(_module(model.base_model.model, f"model.layers.0.{key}")) is torch.nn.Linear
        torch.testing.assert_close(
            model(input_ids=IDS).logits, _merged_logits(base_dir, deltas), **TOL
        )

    # The converted adapter exports like any PEFT one (only layer 1 is adapted).
    registry.export(
        "team/mlx", base=base_dir, output=tmp_path / "merged", dtype="fp32", progress=False
    )
    with torch.no_grad():
        exported = load_base(tmp_path / "merged")(input_ids=IDS).logits
        torch.testing.assert_close(exported, model(input_ids=IDS).logits, atol=1e-4, rtol=0)


def test_mlx_refusals(base_dir, registry, tmp_path):
    dora, _ = _mlx_adapter(tmp_path / "dora", base_dir, fine_tune_type="dora")
    with pytest.raises(ForeignFormat) as info:
        convert_adapter(dora, tmp_path / "out")
    assert str(info.value) == (
        f"{dora / 'adapter_config.json'}: fine_tune_type is 'dora'; hub convert turns mlx-lm"
        " LoRA (fine_tune_type 'lora') into PEFT LoRA, and nothing else"
    )
    wrong, _ = _mlx_adapter(tmp_path / "wrong", base_dir)
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["lora_parameters"]["rank"] = 8
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidAdapter) as info:
        convert_adapter(wrong, tmp_path / "out")
    assert str(info.value) == (
        "adapters.safetensors: module 'model.layers.1.mlp.down_proj' has lora_a [128, 4] and"
        " lora_b [4, 64], but lora_parameters says rank 8 (expected (in, rank) and (rank, out))"
    )
    other = make_base(tmp_path / "wide", hidden_size=32, intermediate_size=64)
    ok, _ = _mlx_adapter(tmp_path / "ok", base_dir)
    with pytest.raises(InvalidAdapter) as info:
        convert_adapter(ok, tmp_path / "out", base=other)
    assert str(info.value) == (
        "tensor 'model.layers.1.mlp.down_proj.lora_a' adapts 'model.layers.1.mlp.down_proj' as"
        " a 128 -> 64 layer, but the base's model.layers.1.mlp.down_proj.weight has shape"
        " [32, 64]"
    )
    assert not (tmp_path / "out").exists()
    full, _ = _mlx_adapter(tmp_path / "full", base_dir, fine_tune_type="full")
    with pytest.raises(ForeignFormat) as info:
        registry.push(full)
    assert str(info.value) == (
        f"{full} is an mlx-lm full fine-tune (fine_tune_type 'full' in adapter_config.json): its"
        " adapters.safetensors holds whole weights, not an adapter, so there is nothing to"
        " register (fuse it into a model with mlx_lm.fuse)"
    )


# -- torchtune ---------------------------------------------------------------------------
TUNE_MODULES = {  # torchtune name -> Hugging Face name
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.output_proj": "self_attn.o_proj",
    "mlp.w1": "mlp.gate_proj",
    "mlp.w2": "mlp.down_proj",
    "mlp.w3": "mlp.up_proj",
}


def _hf_to_tune_rows(n_heads, head_dim=16):
    """Row index of torchtune's q/k layout: W_tune = W_hf[index] (torchtune's hf_to_tune
    permutes each head's rows from rotate_half halves to interleaved pairs)."""
    rows = torch.arange(n_heads * head_dim).view(n_heads, 2, head_dim // 2)
    return rows.transpose(1, 2).reshape(-1)


def _tune_adapter(folder, fmt, rank=4, alpha=8.0, config=True):
    generator = torch.Generator().manual_seed(11)
    tensors = {}
    for layer in (0, 1):
        for tune, hf in TUNE_MODULES.items():
            d_in, d_out = IN_OUT[hf]
            tensors[f"layers.{layer}.{tune}.lora_a.weight"] = (
                torch.randn(rank, d_in, generator=generator) * 0.2
            )
            tensors[f"layers.{layer}.{tune}.lora_b.weight"] = (
                torch.randn(d_out, rank, generator=generator) * 0.2
            )
    folder.mkdir(parents=True)
    if fmt == "pt":
        torch.save(tensors, folder / "adapter_model.pt")
    else:
        save_file(tensors, folder / "adapter_model.safetensors")
    if config:
        (folder / "adapter_config.json").write_text(
            json.dumps(
                {
                    "r": rank,
                    "lora_alpha": alpha,
                    "target_modules": [
                        "q_proj",
                        "k_proj",
                        "v_proj",
                        "output_proj",
                        "w1",
                        "w2",
                        "w3",
                    ],
                    "peft_type": "LORA",
                }
            )
        )
    return folder, tensors


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_torchtune_adapter_is_refused_then_converted_and_matches_torchtune_math(
    fmt, base_dir, registry, tmp_path
):
    folder, tensors = _tune_adapter(tmp_path / "epoch_0", fmt)
    weights = "adapter_model.pt" if fmt == "pt" else "adapter_model.safetensors"
    with pytest.raises(ForeignFormat) as info:
        registry.push(folder, name="team/tune")
    assert str(info.value) == (
        f"{folder} is a torchtune adapter ({weights} with torchtune's module names, e.g."
        " 'layers.0.attn.q_proj.lora_a.weight'), not a PEFT folder: convert it with"
        f" `hub convert {folder} --base BASE_MODEL_FOLDER`, then push the converted folder"
    )
    runner = CliRunner()
    missing = runner.invoke(cli, ["convert", str(folder)])
    assert missing.exit_code == 1
    assert missing.stderr == (
        f"Error: converting the torchtune adapter {folder} needs the base model: pass"
        " --base BASE_MODEL_FOLDER (its config.json gives the architecture)\n"
    )
    out = tmp_path / "peft"
    result = runner.invoke(cli, ["convert", str(folder), "--base", str(base_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Wrote {out}: PEFT LoRA from torchtune, r=4, lora_alpha=8\n"
    card = registry.push(out, name="team/tune").card
    assert (card.method, card.rank, card.alpha) == ("lora", 4, 8.0)
    assert card.target_modules == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"
    ]  # fmt: skip

    model = _peft(base_dir, out)
    base = load_base(base_dir)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(2))
    deltas = {}
    with torch.no_grad():
        for layer in (0, 1):
            for tune, hf in TUNE_MODULES.items():
                d_in, _ = IN_OUT[hf]
                a = tensors[f"layers.{layer}.{tune}.lora_a.weight"]
                b = tensors[f"layers.{layer}.{tune}.lora_b.weight"]
                # torchtune's own layer: W_tune x + (alpha / r) * lora_b(lora_a(x)), in its
                # row order; q/k outputs come back to Hugging Face order through the inverse
                # of the permutation torchtune applies to the base weights.
                w_hf = _module(base, f"model.layers.{layer}.{hf}").weight
                rows = torch.arange(w_hf.shape[0])
                if hf.endswith(("q_proj", "k_proj")):
                    rows = _hf_to_tune_rows(4 if hf.endswith("q_proj") else 2)
                w_tune = w_hf[rows]
                y_tune = x[:, :d_in] @ w_tune.T + 2.0 * (x[:, :d_in] @ a.T @ b.T)
                y_hf = torch.empty_like(y_tune)
                y_hf[:, rows] = y_tune
                got = _module(model.base_model.model, f"model.layers.{layer}.{hf}")(x[:, :d_in])
                torch.testing.assert_close(got, y_hf, **TOL)
                delta = torch.empty_like(w_hf)
                delta[rows] = 2.0 * (b @ a)
                deltas[f"model.layers.{layer}.{hf}"] = delta
        torch.testing.assert_close(
            model(input_ids=IDS).logits, _merged_logits(base_dir, deltas), **TOL
        )


def test_torchtune_qwen2_keeps_rows_and_needs_alpha_without_config(tmp_path):
    base = tmp_path / "qwen2"
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**TINY_LLAMA)).save_pretrained(base)
    folder, tensors = _tune_adapter(tmp_path / "epoch_0", "pt", config=False)
    with pytest.raises(InvalidArgument) as info:
        convert_adapter(folder, tmp_path / "out", base=base)
    assert str(info.value) == (
        f"{folder} has no adapter_config.json giving lora_alpha: pass --alpha (the recipe's"
        " model.lora_alpha)"
    )
    converted = convert_adapter(folder, tmp_path / "out", base=base, alpha=16)
    model = _peft(base, converted.path)
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        q = model.base_model.model.model.layers[1].self_attn.q_proj
        a, b = (
            tensors["layers.1.attn.q_proj.lora_a.weight"],
            tensors["layers.1.attn.q_proj.lora_b.weight"],
        )
        torch.testing.assert_close(q(x) - q.base_layer(x), 4.0 * (x @ a.T @ b.T), **TOL)


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_torchtune_malicious_pickle_is_refused(base_dir, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    with open(folder / "adapter_model.pt", "wb") as fh:
        pickle.dump({"layers.0.attn.q_proj.lora_a.weight": _Exploit()}, fh)
    (folder / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 8, "peft_type": "LORA"}')
    with pytest.raises(InvalidAdapter) as info:
        convert_adapter(folder, tmp_path / "out", base=base_dir)
    assert str(info.value).startswith(
        f"{folder / 'adapter_model.pt'}: not a plain tensor checkpoint, refusing to load it"
    )
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["evil"]  # no staging folder left behind


def test_torchtune_epoch_folder_with_peft_copy_pushes_without_its_pickle(
    adapters, registry, tmp_path
):
    """torchtune's Hugging Face checkpointer writes the PEFT adapter and config beside its own
    adapter_model.pt (and copies of the base's files): that folder is PEFT's, minus the pickle."""
    import shutil

    folder = shutil.copytree(adapters("lora"), tmp_path / "epoch_0")
    _tune_adapter(tmp_path / "tune", "pt")
    shutil.copy(tmp_path / "tune" / "adapter_model.pt", folder / "adapter_model.pt")
    (folder / "config.json").write_text('{"model_type": "llama"}')
    result = registry.push(folder, name="team/tune")
    assert sorted(f.path for f in result.card.files) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
    ]
    assert result.left_out == ["adapter_model.pt"]
    with pytest.raises(InvalidAdapter) as info:
        convert_adapter(folder)
    assert str(info.value) == (
        f"{folder} is already a PEFT folder (adapter_model.safetensors): push it as it is with"
        f" `hub push {folder}`"
    )
    with pytest.raises(InvalidAdapter) as info:
        convert_adapter(tmp_path)
    assert str(info.value) == (
        f"{tmp_path}: nothing to convert (no PEFT adapter_model.bin, no mlx-lm"
        " adapters.safetensors, no torchtune adapter_model.pt)"
    )
