"""The parameter ledger of one adapter: four counts that mean the same for every method.

- ``params_trained``: values the optimizer updated, from the config (P-tuning's prompt
  encoder, not the table it saves; AdaLoRA's ``init_r`` triplets; frozen factors left out).
- ``params_stored``: the adapter's own values in its files, by dtype; frozen values stored
  beside them (VeRA's projections, MiCA's lora_B, base embedding copies) counted apart.
- ``params_changed_when_merged``: base values a merge rewrites, the sum of d x k over the
  rewritten weights (IA3: the scaled weights; modules_to_save: the whole module); 0 for
  prompt methods; None for an adapter that cannot merge.
- ``params_extra_at_inference``: values the unmerged forward reads beyond the base's own
  (shared projections once; prompt methods: the virtual tokens' embeddings).

Each is also a fraction of the base when its count is known. A count the files cannot give
is None, with the reason in ``params_unknown``; the README's ledger table
(``tests/render_ledger.py``) says per method how each is counted. Headers only, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hub.inspect.config import get_bool, get_int
from hub.inspect.methods import PREFIX, Analysis
from hub.inspect.safetensors_header import TensorInfo
from schemas.card import LEDGER
from schemas.methods import METHODS

LORA_FA = "lorafa"
"""The value of the tag ``optimizer`` that declares a LoRA-FA run."""


@dataclass
class LedgerParts:
    """What a composite's ledger needs beyond its members' counts."""

    changed: dict[str, int] | None = None
    """Base tensor -> values a merge rewrites in it; None when unknown."""


BaseShapes = Callable[[], "dict[str, tuple[int, ...]] | None"]
"""Lazily read base weight shapes (``model.layers.0.self_attn.q_proj.weight`` -> shape)."""

NO_BASE = (
    "{what} is not in the adapter's files: it needs the base's weight shapes (push with the"
    " base model's folder readable, see `hub push`)"
)
_NO_MERGE = "{method} cannot be merged into the base weights (it runs unmerged only)"
_GENERIC_MERGE = (
    "generic card: which base values PEFT's merge of {method} rewrites is not read from its tensors"
)


class _Counts:
    """Running totals; a count becomes None (with a reason) once any part is unknown."""

    def __init__(self) -> None:
        self.values: dict[str, int | None] = {"changed": 0, "extra": 0}
        self.unknown: dict[str, str] = {}
        self.changed: dict[str, int] = {}
        """Base tensor name -> values a merge rewrites in it (a stack's union is their sum)."""

    def rewrite(self, name: str, value: int) -> None:
        self.changed[name] = value
        self.add("changed", value)

    def add(self, name: str, value: int | None, reason: str | None = None) -> None:
        if value is None:
            self.values[name] = None
            self.unknown.setdefault(name, reason or "unknown")
        elif self.values[name] is not None:
            self.values[name] = (self.values[name] or 0) + value


def compute_ledger(
    method: str,
    config: dict[str, Any],
    tensors: dict[str, TensorInfo],
    frozen: set[str],
    analysis: Analysis,
    *,
    nested: int = 0,
    params_base: int | None = None,
    base_shapes: BaseShapes = lambda: None,
    optimizer: str | None = None,
) -> tuple[dict[str, Any], LedgerParts]:
    """The ledger fields of a card (``schemas.card.InspectedAdapter``'s ``params_*``).

    Args:
        method: the PEFT type (a key of ``schemas.methods.METHODS``).
        config: the adapter_config.json.
        tensors: the adapter file's header entries.
        frozen: keys of stored tensors PEFT does not train.
        analysis: the method's analysis (``analysis.groups``: module -> its tensors).
        nested: values in nested adapter files (X-LoRA's LoRAs), part of params_stored.
        params_base: the base's parameter count, for the fractions.
        base_shapes: called (at most once) when a count needs the base's weight shapes.
        optimizer: ``lorafa`` when the card's tag ``optimizer=lorafa`` declares a LoRA-FA run
            (PEFT's ``create_lorafa_optimizer`` freezes lora_A; its config does not say so).

    Returns:
        The fields: ``params_trained``, ``params_stored``, ``params_stored_by_dtype``,
        ``params_stored_frozen``, ``params_changed_when_merged``, ``params_extra_at_inference``,
        their ``_fraction``s, ``params_fraction`` and ``params_unknown`` / ``params_notes``;
        and the parts a composite's ledger combines.
    """
    row = METHODS[method]
    own = {k: t for k, t in tensors.items() if k not in frozen}
    stored = nested + sum(t.numel for t in own.values())
    by_dtype: dict[str, int] = {}
    for info in own.values():
        by_dtype[info.dtype.lower()] = by_dtype.get(info.dtype.lower(), 0) + info.numel
    shapes = _Lazy(base_shapes)
    counts = _Counts()
    notes: dict[str, str] = {}
    trained: int | None = stored
    if row.family == "prompt":
        counts.add("changed", 0)
        counts.add("extra", sum(t.numel for t in tensors.values()))
        trained, note = _prompt_trained(method, config, stored)
        if method == "cartridge" and "prompt_embeddings" in tensors:
            # PEFT keeps the first num_frozen_tokens rows of the saved table frozen
            rows = get_int(config, "num_frozen_tokens", 0) or 0
            trained = stored - rows * tensors["prompt_embeddings"].shape[-1]
            note = f"the first num_frozen_tokens={rows} rows of prompt_embeddings are frozen"
        note = note or row.params_note
        if note:
            notes["params_trained"] = note
    elif row.card == "generic":
        _generic(method, tensors, counts, nested)
        if row.params_note:
            notes["params_trained"] = row.params_note
        if method == "xlora":
            trained, notes["params_trained"] = _xlora_trained(config, analysis.nested_modules)
    else:
        _specific(method, config, tensors, frozen, analysis, shapes, counts)
        if method == "adalora":
            trained, note = _adalora_trained(config, tensors, analysis, stored)
            if note:
                notes["params_trained"] = note
        if method == "lora" and optimizer == LORA_FA:
            frozen_a = sum(
                t.numel
                for parts in analysis.groups.values()
                for name, t in parts.items()
                if name in ("lora_A.weight", "lora_embedding_A")
            )
            trained = stored - frozen_a
            notes["params_trained"] = (
                f"LoRA-FA (tag optimizer={LORA_FA}): lora_A stays at its initialisation, so its"
                f" {frozen_a} values are stored but not trained; PEFT counts them as trainable"
                " after loading"
            )
    if method == "lora" and analysis.variant == "mica":
        notes["params_trained"] = "MiCA's lora_B is stored but frozen: in params_stored_frozen"
    if method == "vera":
        notes["params_stored"] = (
            "vera_A / vera_B, the frozen projections shared by all modules, are"
            " params_stored_frozen"
        )
    changed, extra = counts.values["changed"], counts.values["extra"]
    unknown = {
        f"params_{'changed_when_merged' if k == 'changed' else 'extra_at_inference'}": v
        for k, v in counts.unknown.items()
    }
    values = {
        "params_trained": trained,
        "params_stored": stored,
        "params_changed_when_merged": changed,
        "params_extra_at_inference": extra,
    }
    if trained is None:
        unknown["params_trained"] = notes.pop("params_trained", "unknown")
    out: dict[str, Any] = dict(values)
    out.update(
        params_stored_by_dtype=dict(sorted(by_dtype.items())),
        params_stored_frozen=sum(t.numel for k, t in tensors.items() if k in frozen),
        params_unknown=unknown,
        params_notes=notes,
    )
    out.update(fractions(values, params_base))
    return out, LedgerParts(changed=None if changed is None else counts.changed)


def fractions(values: dict[str, int | None], params_base: int | None) -> dict[str, Any]:
    """``<field>_fraction`` of each ledger count, and ``params_fraction`` (the stored one's old
    name), over ``params_base``; None where either is unknown."""

    def part(value: int | None) -> float | None:
        return value / params_base if value is not None and params_base else None

    out: dict[str, Any] = {f"{name}_fraction": part(values.get(name)) for name in LEDGER}
    out["params_base"] = params_base
    out["params_fraction"] = out["params_stored_fraction"]
    return out


class _Lazy:
    def __init__(self, read: BaseShapes) -> None:
        self._read, self._done = read, False
        self._value: dict[str, tuple[int, ...]] | None = None

    def __call__(self) -> dict[str, tuple[int, ...]] | None:
        if not self._done:
            self._value, self._done = self._read(), True
        return self._value


def _weight(shapes: _Lazy, module: str) -> int | None:
    """The base weight's d x k of ``module`` (a name without ``base_model.model.``)."""
    found = shapes()
    if found is None:
        return None
    shape = found.get(f"{module}.weight") or found.get(f"{module}.base_layer.weight")
    return math.prod(shape) if shape else None


def _specific(
    method: str,
    config: dict[str, Any],
    tensors: dict[str, TensorInfo],
    frozen: set[str],
    analysis: Analysis,
    shapes: _Lazy,
    counts: _Counts,
) -> None:
    """Changed and extra values of a method the hub reads in full."""
    grouped: set[str] = set()
    experts = analysis.details.get("experts")
    for module, parts in sorted(analysis.groups.items()):
        grouped |= {t.key for t in parts.values()}
        counts.add("extra", sum(t.numel for t in parts.values()))
        if not analysis.mergeable:
            counts.add("changed", None, _NO_MERGE.format(method=f"{method} ({analysis.variant})"))
            continue
        size = _module_size(method, parts, config)
        if size is None:
            size = _weight(shapes, module)
        if size is None:
            what = f"the shape of the base weight of {module!r}"
            counts.add("changed", None, NO_BASE.format(what=what))
            continue
        if method == "lora" and experts:
            size *= experts if isinstance(experts, int) else experts.get(module, 1)
        counts.rewrite(f"{module}.weight", size)
        bias = parts.get("lora_B.bias")
        if bias is not None:
            counts.rewrite(f"{module}.bias", bias.numel)
    if method == "vera":
        _vera_projections(config, tensors, analysis, shapes, counts)
    biases = set(analysis.bias_modules)
    for key, info in tensors.items():
        if key in grouped or key in analysis.copies:
            continue  # base embedding copies stand in for the base's own weights
        if key in frozen:
            if method != "vera":  # VeRA's projections: counted above
                counts.add("extra", info.numel)
            continue
        name = key.removeprefix(PREFIX)
        if name.endswith(".bias") and name.rsplit(".", 1)[0].removesuffix(".base_layer") in biases:
            counts.rewrite(name, info.numel)  # a trained bias replaces the base's in place
            continue
        # modules_to_save copies and trainable token rows: rewritten by a merge, read unmerged
        counts.rewrite(name, info.numel)
        counts.add("extra", info.numel)


def _module_size(method: str, parts: dict[str, TensorInfo], config: dict[str, Any]) -> int | None:
    """d x k of the base weight a module's tensors rewrite, when the tensors alone tell."""
    if method in ("lora", "adalora"):
        a = parts.get("lora_embedding_A") or parts.get("lora_A.weight") or parts.get("lora_A")
        b = parts.get("lora_embedding_B") or parts.get("lora_B.weight") or parts.get("lora_B")
        if a is None or b is None:
            return None
        if "lora_embedding_A" in parts:  # (r, vocab) and (dim, r)
            return a.shape[1] * b.shape[0]
        return b.shape[0] * math.prod(a.shape[1:])  # conv: (r, in, kh, kw)
    if method == "loha" and "hada_t1" not in parts:
        return parts["hada_w1_a"].shape[0] * parts["hada_w1_b"].shape[1]
    if method == "lokr" and "lokr_t2" not in parts:
        rows, cols = 1, 1
        for factor in ("lokr_w1", "lokr_w2"):
            if factor in parts:
                rows, cols = rows * parts[factor].shape[0], cols * parts[factor].shape[1]
            else:
                rows *= parts[f"{factor}_a"].shape[0]
                cols *= parts[f"{factor}_b"].shape[1]
        return rows * cols
    if method == "boft":
        r, s = parts["boft_R"], parts["boft_s"]
        return s.shape[0] * r.shape[1] * r.shape[3]  # out x (blocks x block size)
    return None  # ia3, oft, vera: one side of the weight only; the base's shapes tell


def _vera_projections(
    config: dict[str, Any],
    tensors: dict[str, TensorInfo],
    analysis: Analysis,
    shapes: _Lazy,
    counts: _Counts,
) -> None:
    """VeRA's shared vera_A (r, largest in) and vera_B (largest out, r): read by every module
    unmerged, counted once; regenerated from the PRNG key when not saved."""
    saved = [t for k, t in tensors.items() if k.split(".")[-1] in ("vera_A", "vera_B")]
    if saved:
        counts.add("extra", sum(t.numel for t in saved))
        return
    r = get_int(config, "r") or 0
    outs = [p["vera_lambda_b"].numel for p in analysis.groups.values()]
    found = shapes()
    ins = [found[f"{m}.weight"][-1] for m in analysis.groups if found and f"{m}.weight" in found]
    if len(ins) != len(outs) or not outs:
        what = "the size of VeRA's regenerated projections (save_projection is off)"
        counts.add("extra", None, NO_BASE.format(what=what))
        return
    counts.add("extra", r * (max(ins) + max(outs)))


def _generic(method: str, tensors: dict[str, TensorInfo], counts: _Counts, nested: int) -> None:
    """Extra: every stored tensor (frozen ones are read too) and nested adapters' (X-LoRA)."""
    row = METHODS[method]
    if row.merge == "none":
        counts.add("changed", None, _NO_MERGE.format(method=method))
    else:
        counts.add("changed", None, _GENERIC_MERGE.format(method=method))
    counts.add("extra", nested + sum(t.numel for t in tensors.values()))


def _xlora_trained(config: dict[str, Any], lora_layers: int) -> tuple[int | None, str]:
    """X-LoRA trains only its classifier (PEFT's ``XLoraClassifier``): xlora_depth linear
    layers from hidden_size through xlora_size to one logit per adapter (per LoRA layer with
    layerwise_scalings), each with a bias. PEFT does not save it."""
    hidden = get_int(config, "hidden_size")
    size = get_int(config, "xlora_size", 2048) or 2048
    depth = get_int(config, "xlora_depth", 1) or 1
    classes = len(config.get("adapters") or {})
    if hidden is None or not classes:
        return None, "X-LoRA's classifier size needs hidden_size and adapters in its config"
    out = classes * (lora_layers if get_bool(config, "layerwise_scalings") else 1)
    if depth == 1:
        count = hidden * out + out
    else:
        count = hidden * size + size + (depth - 2) * (size * size + size) + size * out + out
    return count, (
        "X-LoRA trains only its classifier (counted from xlora_depth, xlora_size, hidden_size"
        " and its adapters), which PEFT does not save; params_stored counts the LoRAs it mixes"
    )


def _prompt_trained(
    method: str, config: dict[str, Any], stored: int
) -> tuple[int | None, str | None]:
    """What a prompt method's optimizer updated: the saved table, or the encoder that made it
    (P-tuning's prompt encoder, prefix tuning's projection), which PEFT trains but never saves.
    """
    tokens = get_int(config, "num_virtual_tokens") or 0
    token_dim = get_int(config, "token_dim")
    hidden = get_int(config, "encoder_hidden_size")
    submodules = get_int(config, "num_transformer_submodules", 1) or 1
    if method == "p_tuning":
        kind = str(config.get("encoder_reparameterization_type") or "MLP").upper()
        if token_dim is None or hidden is None:
            return None, (
                "P-tuning trains a prompt encoder whose size needs token_dim and"
                " encoder_hidden_size, which adapter_config.json lacks"
            )
        embedding = tokens * submodules * token_dim
        if kind == "LSTM":
            layers = get_int(config, "encoder_num_layers", 2) or 2
            lstm = 0
            for layer in range(layers):
                width = token_dim if layer == 0 else 2 * hidden
                lstm += 2 * (4 * hidden * (width + hidden) + 8 * hidden)  # 2 directions
            encoder = lstm + (2 * hidden) * (2 * hidden) + 2 * hidden + 2 * hidden * token_dim
            encoder += token_dim
        else:
            encoder = (token_dim * hidden + hidden) + (hidden * hidden + hidden)
            encoder += hidden * token_dim + token_dim
        return embedding + encoder, (
            f"counts the {kind} prompt encoder P-tuning trains ({embedding} embedding values"
            f" + {encoder} encoder weights); PEFT saves only the prompt it computes"
            " (params_stored), so the loaded encoder is freshly drawn"
        )
    if method == "prefix_tuning" and get_bool(config, "prefix_projection"):
        num_layers = get_int(config, "num_layers")
        if token_dim is None or hidden is None or num_layers is None:
            return None, (
                "prefix tuning with prefix_projection trains an MLP whose size needs token_dim,"
                " num_layers and encoder_hidden_size, which adapter_config.json lacks"
            )
        width = num_layers * 2 * token_dim
        encoder = tokens * token_dim + (token_dim * hidden + hidden) + (hidden * width + width)
        return encoder, (
            "counts the prefix projection (an embedding and a two-layer MLP) prefix tuning"
            " trains; PEFT saves only the key/value prefix it computes (params_stored)"
        )
    return stored, None


def _adalora_trained(
    config: dict[str, Any], tensors: dict[str, TensorInfo], analysis: Analysis, stored: int
) -> tuple[int, str | None]:
    """AdaLoRA trained ``init_r`` triplets per module (pruning zeroes lora_E during training);
    PEFT's saved file keeps only those its rank_pattern kept, when it has one."""
    init_r = get_int(config, "init_r", get_int(config, "r")) or 0
    extra = 0
    for parts in analysis.groups.values():
        a = parts.get("lora_A") or parts.get("lora_A.weight")
        b = parts.get("lora_B") or parts.get("lora_B.weight")
        if a is None or b is None:
            continue
        kept = a.shape[0]
        extra += (init_r - kept) * (a.shape[1] + b.shape[0] + 1)
    if not extra:
        return stored, None
    return stored + extra, (
        f"AdaLoRA trained init_r={init_r} triplets per module; the file keeps those its"
        " rank_pattern kept, which is what PEFT counts after loading (params_stored)"
    )


def composite_ledger(
    kind: str,
    members: list[tuple[dict[str, Any], LedgerParts | None]],
    params_base: int | None,
) -> dict[str, Any]:
    """The ledger of a stack or ensemble from its members' ledgers (``(card fields, parts)``).

    Trained, stored and extra values add up (every member's tensors are loaded and run); a
    stack's merge rewrites the union of its members' base tensors (two LoRAs on one q_proj
    rewrite it once); an ensemble never merges (it averages its members' outputs).
    """
    out: dict[str, Any] = {}
    unknown: dict[str, str] = {}
    for name in ("params_trained", "params_stored", "params_extra_at_inference"):
        counts = [m.get(name) for m, _ in members]
        out[name] = None if any(v is None for v in counts) else sum(v or 0 for v in counts)
        if out[name] is None:
            unknown[name] = next(
                f"a member's {name} is unknown: {(m.get('params_unknown') or {}).get(name, '')}"
                for m, _ in members
                if m.get(name) is None
            )
    if kind == "ensemble":
        out["params_changed_when_merged"] = None
        unknown["params_changed_when_merged"] = "an ensemble is never merged into the base"
    else:
        union: dict[str, int] = {}
        for fields, parts in members:
            if fields.get("params_changed_when_merged") == 0:
                continue  # a prompt member rewrites nothing
            if parts is None or parts.changed is None:
                union = {}
                unknown["params_changed_when_merged"] = (
                    "a member's params_changed_when_merged is unknown: "
                    + (fields.get("params_unknown") or {}).get("params_changed_when_merged", "")
                )
                break
            for key, value in parts.changed.items():
                union[key] = max(union.get(key, 0), value)
        out["params_changed_when_merged"] = (
            None if "params_changed_when_merged" in unknown else sum(union.values())
        )
    by_dtype: dict[str, int] = {}
    for fields, _ in members:
        for dtype, count in (fields.get("params_stored_by_dtype") or {}).items():
            by_dtype[dtype] = by_dtype.get(dtype, 0) + count
    values = {name: out[name] for name in LEDGER}
    out.update(
        params_stored_by_dtype=dict(sorted(by_dtype.items())),
        params_stored_frozen=sum(f.get("params_stored_frozen") or 0 for f, _ in members),
        params_unknown=unknown,
        params_notes={
            "params_changed_when_merged": "a stack's merge rewrites the union of its members'"
            " base tensors, each counted once"
        }
        if kind != "ensemble"
        else {},
    )
    out.update(fractions(values, params_base))
    return out


def inputs_trained(
    fields: dict[str, Any], inputs: list[dict[str, Any]], operator: str
) -> dict[str, Any]:
    """A merge result's params_trained: nothing was trained after the merge, so it is the sum
    of its inputs' (the training the result is made of); its other counts are its own."""
    values = [card.get("params_trained") for card in inputs]
    out = dict(fields)
    out["params_unknown"] = dict(fields.get("params_unknown") or {})
    out["params_notes"] = dict(fields.get("params_notes") or {})
    if any(v is None for v in values):
        out["params_trained"] = None
        out["params_unknown"]["params_trained"] = "an input's params_trained is unknown"
    else:
        out["params_trained"] = sum(v or 0 for v in values)
        out["params_notes"]["params_trained"] = (
            f"a {operator} merge of {len(inputs)} adapters: the sum of its inputs'"
            " params_trained (nothing is trained after merging)"
        )
    base = fields.get("params_base")
    out["params_trained_fraction"] = (
        out["params_trained"] / base if out["params_trained"] is not None and base else None
    )
    return out
