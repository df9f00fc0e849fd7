"""torchtune LoRA adapters -> PEFT LoRA folders, for a given base model.

torchtune's ``LoRALinear`` stores ``lora_a.weight`` (r, in) and ``lora_b.weight`` (out, r) and
computes ``y = x W^T + (alpha / r) * lora_b(lora_a(dropout(x)))``: PEFT's math and layout, so
the matrices are copied. What differs is the names, and for Llama-family models the row order
of q/k: torchtune keeps Meta's interleaved rotary layout, so its ``q_proj`` / ``k_proj``
weights are the Hugging Face ones with the rows of each head permuted (``hf_to_tune``). An
adapter's ``lora_b`` of q/k is therefore permuted back, head by head, which is why the
base must be known (``--base``: its ``config.json`` gives the family, heads and head size).

Names (torchtune -> Hugging Face, under ``base_model.model.``):
``layers.N.attn.{q,k,v}_proj`` -> ``model.layers.N.self_attn.{q,k,v}_proj``,
``layers.N.attn.output_proj`` -> ``model.layers.N.self_attn.o_proj``,
``layers.N.mlp.w1`` / ``w2`` / ``w3`` -> ``model.layers.N.mlp.gate_proj`` / ``down_proj`` /
``up_proj``, ``output`` -> ``lm_head``. ``target_modules`` in torchtune's ``adapter_config.json``
use the same short names (``output_proj``, ``w1``...).

The weights file is ``adapter_model.pt`` (a pickle, read here only with
``torch.load(weights_only=True)``, which rebuilds tensors and refuses any other object),
``adapter_<epoch>.pt`` (torchtune < 0.3) or ``adapter_model.safetensors`` in torchtune's names.
Not converted: DoRA (``magnitude`` tensors) and model families other than those in
``_ROPE_PERMUTED`` / ``_ROPE_HF``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hub.formats import torchtune_weights
from hub.formats.peft_folder import (
    base_config,
    base_shapes,
    check_against_base,
    write_lora_folder,
)
from schemas.errors import ForeignFormat, InvalidAdapter, InvalidArgument

_CONFIG = "adapter_config.json"

# torchtune module -> Hugging Face module (the layer number is kept).
_MODULES = {
    "attn.q_proj": "self_attn.q_proj",
    "attn.k_proj": "self_attn.k_proj",
    "attn.v_proj": "self_attn.v_proj",
    "attn.output_proj": "self_attn.o_proj",
    "mlp.w1": "mlp.gate_proj",
    "mlp.w2": "mlp.down_proj",
    "mlp.w3": "mlp.up_proj",
}
_KEY = re.compile(
    r"(?:layers\.(?P<layer>\d+)\.(?P<module>attn\.\w+|mlp\.\w+)|(?P<output>output))"
    r"\.(?P<part>lora_a|lora_b|magnitude)(?:\.weight)?"
)
# Families whose torchtune q/k rows are permuted from Hugging Face's (convert_weights.py),
# and those that keep Hugging Face's rotary layout (qwen2/_convert_weights.py).
_ROPE_PERMUTED = frozenset({"llama", "mistral", "gemma"})
_ROPE_HF = frozenset({"qwen2"})


def convert_torchtune(folder: Path, dest: Path, base: Path | None, alpha: float | None) -> str:
    """Write the PEFT form of the torchtune adapter ``folder`` into the empty folder ``dest``.

    Args:
        base: the base model folder (required): the family, heads and head size for the q/k
            rows, and the module shapes every tensor is checked against.
        alpha: ``lora_alpha`` when the folder has no ``adapter_config.json`` (the recipe's
            ``model.lora_alpha``); must agree with the config when both are given.

    Returns:
        A one-line summary (``r=8, lora_alpha=16``).

    Raises:
        InvalidArgument: no ``--base``, an unknown family, or ``alpha`` missing / contradicting.
        ForeignFormat: DoRA or a module torchtune's Llama-family names do not cover.
        InvalidAdapter: a pickle that is not a plain dict of tensors, shapes that disagree.
    """
    if base is None:
        raise InvalidArgument(
            f"converting the torchtune adapter {folder} needs the base model: pass"
            " --base BASE_MODEL_FOLDER (its config.json gives the architecture)"
        )
    arch = base_config(base)
    family = arch.get("model_type")
    if family not in _ROPE_PERMUTED | _ROPE_HF:
        known = ", ".join(sorted(_ROPE_PERMUTED | _ROPE_HF))
        raise InvalidArgument(
            f"--base {base}: model_type {family!r} is not a family whose torchtune layout hub"
            f" convert knows ({known})"
        )
    config = _read_config(folder)
    weights = torchtune_weights(folder)
    if weights is None:
        raise InvalidAdapter(f"{folder}: no torchtune adapter weights", path=str(folder))
    state = _load(weights)

    heads = int(arch["num_attention_heads"])
    kv_heads = int(arch.get("num_key_value_heads") or heads)
    head_dim = int(arch.get("head_dim") or arch["hidden_size"] // heads)
    shapes = base_shapes(base)
    tensors: dict[str, Any] = {}
    modules: set[str] = set()
    ranks: set[int] = set()
    for key, tensor in state.items():
        match = _KEY.fullmatch(key)
        hf = None
        if match and match["output"]:
            hf = "lm_head"
        elif match and match["module"] in _MODULES:
            hf = f"model.layers.{match['layer']}.{_MODULES[match['module']]}"
        if hf is None or match is None:
            raise ForeignFormat(
                f"{weights.name}: tensor {key!r} has no PEFT name: hub convert maps torchtune's"
                " decoder LoRA (layers.N.attn.{q,k,v,output}_proj, layers.N.mlp.w1/w2/w3,"
                " output)",
                format="torchtune",
                tensor=key,
            )
        if match["part"] == "magnitude":
            raise ForeignFormat(
                f"{weights.name}: tensor {key!r} is a DoRA magnitude; torchtune DoRA is not"
                " converted (only LoRA)",
                format="torchtune",
                tensor=key,
            )
        if tensor.dim() != 2:
            raise InvalidAdapter(
                f"{weights.name}: tensor {key!r} has shape {list(tensor.shape)}, expected a matrix",
                tensor=key,
            )
        if match["part"] == "lora_a":
            ranks.add(tensor.shape[0])
            tensors[f"base_model.model.{hf}.lora_A.weight"] = tensor
        else:
            name = hf.rsplit(".", 1)[-1]
            if family in _ROPE_PERMUTED and name in ("q_proj", "k_proj"):
                tensor = _unpermute_rows(tensor, heads if name == "q_proj" else kv_heads, head_dim)
            tensors[f"base_model.model.{hf}.lora_B.weight"] = tensor
        modules.add(hf)
    for module in sorted(modules):
        a = tensors.get(f"base_model.model.{module}.lora_A.weight")
        b = tensors.get(f"base_model.model.{module}.lora_B.weight")
        if a is None or b is None:
            raise InvalidAdapter(
                f"{weights.name}: module {module!r} has only one of lora_a / lora_b",
                module=module,
            )
        if a.shape[0] != b.shape[1]:
            raise InvalidAdapter(
                f"{weights.name}: module {module!r} has lora_a {list(a.shape)} and lora_b"
                f" {list(b.shape)}: their ranks differ",
                module=module,
            )
        check_against_base(shapes, module, a.shape[1], b.shape[0], module)
    if not tensors:
        raise InvalidAdapter(f"{weights.name}: no LoRA tensors", path=str(weights))
    if len(ranks) != 1:
        raise InvalidAdapter(f"{weights.name}: modules have different ranks {sorted(ranks)}")
    rank = ranks.pop()
    alpha = _alpha(config, alpha, rank, folder)
    named = config.get("base_model_name_or_path")
    write_lora_folder(
        dest,
        tensors,
        rank=rank,
        alpha=alpha,
        dropout=0.0,
        modules=sorted(modules),
        base_model=named if isinstance(named, str) and named else str(base),
        readme=(
            f"---\nlibrary_name: peft\ntags: [lora, torchtune, hub-convert]\n---\n\n"
            f"LoRA adapter converted from torchtune ({weights.name}) by `hub convert` for a"
            f" {family} base: rank {rank}, lora_alpha {alpha:g}, {len(modules)} modules.\n"
        ),
    )
    return f"r={rank}, lora_alpha={alpha:g}"


def _unpermute_rows(lora_b: Any, heads: int, head_dim: int) -> Any:
    """torchtune's q/k row order back to Hugging Face's: within each head, the rows torchtune
    interleaves (pairs) go back to the two halves rotate_half expects."""
    if lora_b.shape[0] != heads * head_dim:
        raise InvalidAdapter(
            f"a q/k lora_b has {lora_b.shape[0]} rows, but the base has {heads} heads of {head_dim}"
        )
    rank = lora_b.shape[1]
    return lora_b.view(heads, head_dim // 2, 2, rank).transpose(1, 2).reshape(-1, rank)


def _load(weights: Path) -> dict[str, Any]:
    import torch

    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(weights)))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler's refusals come in many types
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise InvalidAdapter(
            f"{weights}: not a plain tensor checkpoint, refusing to load it ({first_line})",
            path=str(weights),
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InvalidAdapter(f"{weights}: expected a dict of tensors", path=str(weights))
    return state


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / _CONFIG
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise InvalidAdapter(f"{path} is not valid JSON ({error})", path=str(path)) from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{path} must hold a JSON object", path=str(path))
    return config


def _alpha(config: dict[str, Any], given: float | None, rank: int, folder: Path) -> float:
    stored = config.get("lora_alpha")
    if stored is not None and (isinstance(stored, bool) or not isinstance(stored, int | float)):
        raise InvalidAdapter(
            f"{folder / _CONFIG}: field 'lora_alpha' must be a number, got {stored!r}",
            field="lora_alpha",
        )
    r = config.get("r")
    if r is not None and r != rank:
        raise InvalidAdapter(
            f"{folder / _CONFIG}: field 'r' is {r!r} but the tensors have rank {rank}",
            field="r",
        )
    if stored is None and given is None:
        raise InvalidArgument(
            f"{folder} has no {_CONFIG} giving lora_alpha: pass --alpha (the recipe's"
            " model.lora_alpha)"
        )
    if stored is not None and given is not None and float(stored) != float(given):
        raise InvalidArgument(
            f"--alpha {given:g} contradicts lora_alpha {stored} in {folder / _CONFIG}"
        )
    return float(stored if stored is not None else given)  # type: ignore[arg-type]
