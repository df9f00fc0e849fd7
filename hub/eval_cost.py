"""``hub eval --cost``: what an adapter costs at inference, base vs unmerged vs merged.

One fresh base model per adapter, measured in this order on the same loaded weights:

1. ``base``: the base model alone.
2. ``unmerged``: the adapter loaded onto it with ``PeftModel.from_pretrained`` (timed: the
   adapter load time); an AdapterHub save with adapters' own ``load_adapter``. Composites run
   through their own runner instead: a ``stack`` as ``compose.composites.load_composed``
   applies it (mergeable members merged in order, a prompt member last), an ``ensemble`` as
   ``EnsembleLM`` (every member's prompt in one batch).
3. ``merged`` (methods PEFT merges): PEFT's ``merge_and_unload`` on the unmerged model, in
   place (timed: the merge time); AdapterHub's ungated LoRA / IA3 through adapters'
   ``merge_adapter``, never a bottleneck (a non-linearity sits between its projections: the
   record's ``merge_note`` says so). This is the in-memory merge a server does at load, so the
   merged model is the unmerged one's own weights and nothing else differs between the two
   runs; ``hub export`` writes the same merge to disk shard by shard, and is checked against
   PEFT's forward pass separately, so its time would measure disk writes rather than the merge.
   Before and after merging, the same probe prompts (the eval data's first rows) are run:
   the max logit difference and the greedy outputs' agreement say what merging changed.

Each mode gets ``compose.cost.measure`` (latency per batch size and prompt length, activation
peak), its own bytes, peak bytes and the difference to the base's, and the relative overhead
against the base. Prompt methods also report their extra tokens and what those cost: KV-cache
bytes per sequence and the share of the context they take at each prompt length.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compose.cost import CostOptions
    from compose.eval_data import EvalData
    from schemas.card import AdapterCard

PROBE_ROWS = 8


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def _allocated(device: Any) -> int:
    import torch

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        return int(torch.cuda.memory_allocated())
    return 0


def _probe_inputs(tokenizer: Any, dataset: EvalData, length: int, device: Any) -> tuple[Any, Any]:
    """The first rows' prompts (or texts), at most ``length`` tokens each, left-padded."""
    import torch

    from compose.evaluate import pad_token

    texts = [r.text if dataset.kind == "text" else r.prompt for r in dataset.rows[:PROBE_ROWS]]
    encoded = [tokenizer(t or "")["input_ids"][:length] or [pad_token(tokenizer)] for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), pad_token(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, width - len(e) :] = torch.tensor(e)
        mask[i, width - len(e) :] = 1
    return ids.to(device), mask.to(device)


def _mode(
    model: Any, tokenizer: Any, options: CostOptions, device: Any, start_bytes: int, pad: int
) -> dict[str, Any]:
    from compose import cost

    static = _allocated(device) - start_bytes if device.type == "cuda" else cost.model_bytes(model)
    configs = cost.measure(
        model,
        tokenizer,
        options,
        device=device,
        vocab_size=int(model.config.vocab_size),
        pad_id=pad,
    )
    return {
        "model_bytes": static,
        "peak_bytes": static + max(c["activation_peak_bytes"] for c in configs),
        "configs": configs,
    }


def _kv_bytes_per_token(config: Any, element_size: int) -> int:
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * int(config.num_hidden_layers) * kv_heads * head_dim * element_size


def _mergeable(card: AdapterCard, folder: Path) -> tuple[bool, str | None]:
    from schemas.methods import method_row

    if card.method == "composite":
        return False, None
    if card.library == "adapters":
        from hub.formats.adapterhub import unmerged_reason

        why = unmerged_reason(folder)
        return why is None, None if why is None else f"AdapterHub adapter: {why}; it runs unmerged"
    try:
        row = method_row(card.method, card.variant)
    except KeyError:
        return False, f"{card.method} is not a PEFT type the hub knows"
    if row.family == "prompt":
        return False, f"{card.method} adds virtual tokens: there is nothing to merge"
    if row.merge == "none":
        return False, f"PEFT cannot merge {card.method}"
    return True, None


def _merge_adapterhub(model: Any) -> Any:
    """adapters' own in-place merge of the loaded LoRA / IA3 (``merge_adapter``): the merged
    layers then skip the adapter's computation."""
    for name in list(model.adapters_config.adapters):
        model.merge_adapter(name)
    return model


def measure_cost(
    card: AdapterCard,
    folder: Path,
    base_dir: Path,
    tokenizer: Any,
    dataset: EvalData,
    *,
    dtype: str,
    device: Any,
    options: CostOptions,
) -> dict[str, Any]:
    """The ``cost`` of an eval record for the adapter at ``folder`` (see the module docstring).

    Returns:
        ``{"device", "dtype", "options", "modes": {MODE: {"model_bytes", "peak_bytes",
        "above_base_bytes", "overhead", "configs"}}, "base_load_seconds",
        "adapter_load_seconds", "merge": {...} | None, "merge_note", "prompt": {...} | None}``.
    """
    import torch
    from peft import PeftModel

    from compose import cost
    from compose.composites import COMPOSITE_FILE, language_model, load_composed, read_composite
    from compose.evaluate import pad_token
    from hub.evals import device_label, load_base_model

    pad = pad_token(tokenizer)
    start_bytes = _allocated(device)
    started = time.perf_counter()
    model = load_base_model(base_dir, dtype, device)
    _sync(device)
    base_load = time.perf_counter() - started
    modes = {"base": _mode(model, tokenizer, options, device, start_bytes, pad)}
    probe_ids, probe_mask = _probe_inputs(tokenizer, dataset, max(options.prompt_lengths), device)
    element_size = next(model.parameters()).element_size()
    kv_per_token = _kv_bytes_per_token(model.config, element_size)

    composite = (folder / COMPOSITE_FILE).is_file()
    kind = read_composite(folder)["kind"] if composite else None
    started = time.perf_counter()
    adapterhub = not composite and card.library == "adapters"
    if composite:
        adapted = language_model(load_composed(model, folder))
    elif adapterhub:  # through adapters' own load_adapter, onto the same base
        adapted = load_composed(model, folder)
    else:
        adapted = PeftModel.from_pretrained(model, str(folder)).eval()
    _sync(device)
    adapter_load = time.perf_counter() - started
    name = kind or "unmerged"
    modes[name] = _mode(adapted, tokenizer, options, device, start_bytes, pad)

    merge: dict[str, Any] | None = None
    mergeable, note = _mergeable(card, folder)
    if composite:
        note = (
            "a stack's mergeable members are merged as it loads (its load time includes them)"
            if kind == "stack"
            else "an ensemble runs its members' prompts in one batch; nothing merges"
        )
    if mergeable:
        before = cost.probe(adapted, probe_ids, probe_mask, options.new_tokens, pad)
        started = time.perf_counter()
        merged = _merge_adapterhub(adapted) if adapterhub else adapted.merge_and_unload()
        _sync(device)
        merge_seconds = time.perf_counter() - started
        del adapted
        modes["merged"] = _mode(merged, tokenizer, options, device, start_bytes, pad)
        after = cost.probe(merged, probe_ids, probe_mask, options.new_tokens, pad)
        merge = {"seconds": merge_seconds, **cost.agreement(before, after, probe_mask)}
        del merged
    else:
        del adapted
    del model
    _allocated(device)  # frees what the runs left on the GPU before the next adapter

    base_mode = modes["base"]
    for mode_name, mode in modes.items():
        mode["above_base_bytes"] = mode["peak_bytes"] - base_mode["peak_bytes"]
        mode["overhead"] = (
            cost.overhead(mode["configs"], base_mode["configs"]) if mode_name != "base" else None
        )
    extra = card.inference_overhead.extra_tokens
    prompt = None
    if extra:
        members = len((card.details or {}).get("members") or []) if kind == "ensemble" else 1
        extra //= members  # an ensemble's card counts every member's prompt
        prompt = {
            "extra_tokens": extra,
            "sequences_per_input": members,
            "kv_cache_bytes_per_sequence": extra * kv_per_token,
            "context_share": {
                str(length): extra / (length + extra) for length in options.prompt_lengths
            },
        }
    return {
        "device": device_label(device),
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "options": options.as_dict(),
        "modes": modes,
        "base_load_seconds": base_load,
        "adapter_load_seconds": adapter_load,
        "merge": merge,
        "merge_note": note,
        "prompt": prompt,
    }
