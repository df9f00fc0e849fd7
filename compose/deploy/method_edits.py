"""Each mergeable PEFT method's factors as ``Edit`` objects on the base's tensors.

``BUILDERS[method](module, factors, config, base, label, tensors)`` gives the edits of one
adapted module, shape-checked against the base; ``compose.deploy.adapters.load_adapter``
calls it for every module of a folder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from compose.deploy import deltas
from compose.deploy.base import BaseFolder
from compose.deploy.edits import (
    Edit,
    LoraFactors,
    check_shape,
    need_factors,
    pattern_value,
    target_tensor,
)
from compose.deploy.experts import Part, expert_delta, memory_map, parameter_shape
from compose.peft_patterns import (
    adalora_scaling,
    block_diagonal_factor,
    lora_variant,
    parameter_targets,
)
from schemas.errors import IncompatibleAdapters

if TYPE_CHECKING:
    from torch import Tensor


def _lora_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    rank = int(pattern_value(config.get("rank_pattern"), module, config.get("r", 8)))
    alpha = float(
        pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank))
    )
    scale = deltas.lora_scale(alpha, rank, rslora=bool(config.get("use_rslora")))
    if parameter_targets(module, config.get("target_parameters")):
        return _parameter_edits(module, f, config, base, label, rank, scale)
    fif = bool(config.get("fan_in_fan_out"))
    target = target_tensor(base, module, label)
    shape = base.shape(target)
    if "lora_embedding_A" in f:
        need_factors(f, ("lora_embedding_A", "lora_embedding_B"), module, label)
        a, b = f["lora_embedding_A"], f["lora_embedding_B"]
        check_shape(label, module, shape, (a.shape[1], b.shape[0]))
        magnitude = f.get("lora_magnitude_vector", f.get("lora_magnitude_vector.weight"))
        if magnitude is not None:
            # PEFT's DoraEmbeddingVariant: the embedding is DoRA on a fan_in_fan_out layer
            # (one magnitude per embedding dimension, the norm taken over the vocabulary).
            mag = magnitude.reshape(-1)
            check_shape(label, module + " (DoRA magnitude)", (shape[1],), tuple(mag.shape))
            merge = lambda w: deltas.dora_merge(w, a, b, scale, mag, fan_in_fan_out=True)  # noqa: E731
            return [Edit(target, module, "dora", merge)]
        factors = LoraFactors(a, b, scale, embedding=True)
        return [
            Edit(
                target,
                module,
                "embedding-lora",
                lambda w: deltas.add_embedding_lora_(w, a, b, scale),
                factors,
                rows=lambda block, rows: deltas.add_embedding_lora_(block, a[:, rows], b, scale),
            )
        ]
    need_factors(f, ("lora_A.weight", "lora_B.weight"), module, label)
    a, b = f["lora_A.weight"], f["lora_B.weight"]
    if a.ndim != 2 or b.ndim != 2:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a convolution; only linear layers export",
            adapter=label,
            module=module,
        )
    a, b = _block_diagonal(module, a, b, config.get("use_bdlora"))
    if "lora_diag" in f:
        return _kasa_edits(module, target, a, b * f["lora_diag"], scale, shape, fif, label)
    dims = (b.shape[0], a.shape[1])
    check_shape(label, module, shape, dims[::-1] if fif else dims)
    edits: list[Edit] = []
    magnitude = f.get("lora_magnitude_vector", f.get("lora_magnitude_vector.weight"))
    if magnitude is not None:
        mag = magnitude.reshape(-1)
        check_shape(label, module + " (DoRA magnitude)", (dims[0],), tuple(mag.shape))
        edits.append(
            Edit(
                target,
                module,
                "dora",
                lambda w: deltas.dora_merge(w, a, b, scale, mag, fan_in_fan_out=fif),
                # The norm is per output row: row blocks are exact unless the layer is stored
                # transposed (then an output row is a column of the stored weight).
                rows=None
                if fif
                else lambda block, rows: deltas.dora_merge(block, a, b[rows], scale, mag[rows]),
            )
        )
    else:
        edits.append(
            Edit(
                target,
                module,
                lora_variant(config) or "lora",  # a variant's folder is no plain LoRA
                lambda w: deltas.add_lora_(w, a, b, scale, fan_in_fan_out=fif),
                LoraFactors(a, b, scale),
                rows=(
                    (
                        lambda block, rows: deltas.add_lora_(
                            block, a[:, rows], b, scale, fan_in_fan_out=True
                        )
                    )
                    if fif
                    else (lambda block, rows: deltas.add_lora_(block, a, b[rows], scale))
                ),
            )
        )
    if "lora_B.bias" in f:
        bias = f["lora_B.bias"]
        bias_target = base.resolve(module, "bias")
        if bias_target is None:
            raise IncompatibleAdapters(
                f"adapter {label}: module {module} has a LoRA bias (lora_bias=true) but the"
                f" base's {module} has no bias to merge it into; a merged model would need a"
                " bias the architecture does not have: serve the adapter unmerged with PEFT",
                adapter=label,
                module=module,
            )
        check_shape(label, module + ".bias", base.shape(bias_target), tuple(bias.shape))
        edits.append(
            Edit(
                bias_target,
                module,
                "bias",
                lambda w: w + bias * scale,
                rows=lambda block, rows: block.add_(bias[rows], alpha=scale),
            )
        )
    return edits


def _block_diagonal(module: str, a: Tensor, b: Tensor, bdlora: Any) -> tuple[Tensor, Tensor]:
    """BD-LoRA: the block-diagonal factor expanded (PEFT's ``weight_as_blockdiagonal_matrix``:
    the stored ``(rows, cols / n)`` weight cut into n row blocks along the diagonal)."""
    factor = block_diagonal_factor(module, bdlora)
    if factor is None:
        return a, b
    import torch

    blocks = int(bdlora.get("nblocks") or 1)
    expand = lambda w: torch.block_diag(*torch.chunk(w, blocks, dim=0))  # noqa: E731
    return (expand(a), b) if factor == "A" else (a, expand(b))


def _kasa_edits(
    module: str,
    target: str,
    a: Tensor,
    b: Tensor,
    scale: float,
    shape: tuple[int, ...],
    fan_in_fan_out: bool,
    label: str,
) -> list[Edit]:
    """KaSA: PEFT truncates the base weight to its rank ``k - r`` SVD approximation when it
    builds the layer (the r smallest singular components dropped), then adds
    ``scale * B diag(lora_diag) A`` (``b`` here already scaled by lora_diag)."""
    if fan_in_fan_out:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a KaSA layer stored transposed"
            " (fan_in_fan_out), which PEFT does not build",
            adapter=label,
            module=module,
        )
    check_shape(label, module, shape, (b.shape[0], a.shape[1]))
    rank = a.shape[0]
    return [
        Edit(
            target,
            module,
            "kasa",
            lambda w: deltas.add_lora_(deltas.svd_truncated(w, rank), a, b, scale),
        )
    ]


def _parameter_edits(
    module: str,
    f: dict[str, Tensor],
    config: dict[str, Any],
    base: BaseFolder,
    label: str,
    rank: int,
    scale: float,
) -> list[Edit]:
    """LoRA on a parameter (``target_parameters``): a router's 2-D weight, or a 3-D expert
    stack whose per-expert deltas land on the base tensors each expert is stored in."""
    need_factors(f, ("lora_A.weight", "lora_B.weight"), module, label)
    a, b = f["lora_A.weight"], f["lora_B.weight"]
    if "lora_B.bias" in f or "lora_magnitude_vector" in f:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a parameter LoRA with a bias or DoRA, which"
            " PEFT's ParamWrapper does not have",
            adapter=label,
            module=module,
        )
    fitting, seen = [], []
    for name in parameter_targets(module, config.get("target_parameters")):
        parts = _parameter_parts(base, name)
        if parts is None:
            continue
        shape = parameter_shape(base, parts)
        seen.append(f"{name} {list(shape)}")
        if _fits(shape, a, b, rank):
            fitting.append((name, parts, shape))
    if len(fitting) != 1:
        found = "; ".join(seen) or "none of them is in the base"
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} has lora_A {list(a.shape)} and lora_B"
            f" {list(b.shape)}, which fit {len(fitting)} of the parameters its"
            f" target_parameters names ({found}); the base does not match the adapter",
            adapter=label,
            module=module,
        )
    _, parts, shape = fitting[0]
    if len(shape) == 2:
        (part,) = parts
        return [
            Edit(
                part.name,
                module,
                "parameter-lora",
                lambda w: deltas.add_lora_(w, a, b, scale),
                LoraFactors(a, b, scale),
                rows=lambda block, rows: deltas.add_lora_(block, a, b[rows], scale),
            )
        ]
    if _square(shape):
        raise IncompatibleAdapters(
            f"adapter {label}: module {module}'s experts are square {list(shape)}: whether PEFT"
            " stored them transposed cannot be told from the shapes",
            adapter=label,
            module=module,
        )
    return [_expert_edit(part, module, a, b, scale, shape) for part in parts]


def _square(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[1] == shape[2]


def _expert_edit(
    part: Part, module: str, a: Tensor, b: Tensor, scale: float, shape: tuple[int, ...]
) -> Edit:
    """Add one expert's delta (or the whole stack's, for a stack stored as one tensor)."""
    if part.expert is None:
        count = shape[0]
        return Edit(
            part.name,
            module,
            "expert-lora",
            lambda w: w.add_(
                _stack([expert_delta(a, b, scale, shape, e, slice(None)) for e in range(count)])
            ),
        )
    expert, rows = part.expert, part.rows

    def add_rows(block: Tensor, span: slice) -> Tensor:
        start = rows.start + span.start
        return block.add_(
            expert_delta(a, b, scale, shape, expert, slice(start, start + len(block)))
        )

    return Edit(
        part.name,
        module,
        "expert-lora",
        lambda w: w.add_(expert_delta(a, b, scale, shape, expert, rows)),
        rows=add_rows,
    )


def _stack(tensors: list[Tensor]) -> Tensor:
    import torch

    return torch.stack(tensors)


def _parameter_parts(base: BaseFolder, name: str) -> list[Part] | None:
    """Where the in-memory parameter ``name`` is in the base's files, if anywhere."""
    module, _, param = name.rpartition(".")
    target = base.resolve(module, param)
    if target is not None:
        return [Part(target, None, slice(0, base.shape(target)[0]))]
    return memory_map(base).get(name)


def _fits(shape: tuple[int, ...], a: Tensor, b: Tensor, rank: int) -> bool:
    """Whether LoRA factors of rank ``rank`` fit a parameter of ``shape`` as PEFT lays them
    out: ``(out, in)``, or ``(experts, out, in)`` / ``(experts, in, out)`` with r x experts."""
    if len(shape) == 2:
        return a.shape == (rank, shape[1]) and b.shape == (shape[0], rank)
    if len(shape) != 3 or a.shape[0] != rank * shape[0] or b.shape[1] != a.shape[0]:
        return False
    return (a.shape[1], b.shape[0]) in ((shape[2], shape[1]), (shape[1], shape[2]))


def _adalora_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    need_factors(f, ("lora_A", "lora_B", "lora_E"), module, label)
    a, b, e = f["lora_A"], f["lora_B"], f["lora_E"]
    fif = bool(config.get("fan_in_fan_out"))
    scaling, ranknum = adalora_scaling(config, module)
    target = target_tensor(base, module, label)
    dims = (b.shape[0], a.shape[1])
    check_shape(label, module, base.shape(target), dims[::-1] if fif else dims)
    return [
        Edit(
            target,
            module,
            "adalora",
            lambda w: w + deltas.adalora_delta(a, b, e, scaling, ranknum, fan_in_fan_out=fif),
        )
    ]


def _ia3_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    vector = f["ia3_l"]
    fif = bool(config.get("fan_in_fan_out"))
    target = target_tensor(base, module, label)
    shape = base.shape(target)
    out_in = shape[::-1] if fif else shape
    feedforward = vector.shape[0] == 1 and out_in[0] != 1
    expected = (1, out_in[1]) if feedforward else (out_in[0], 1)
    check_shape(label, module + " (IA3 vector)", expected, tuple(vector.shape))
    # The vector scales rows or columns of the stored weight (transposed for fan_in_fan_out).
    stored = vector.T if fif else vector
    scales_rows = stored.shape[0] != 1
    edits = [
        Edit(
            target,
            module,
            "ia3",
            lambda w: deltas.ia3_merge(w, vector, fan_in_fan_out=fif),
            rows=lambda block, rows: block.mul_(stored[rows] if scales_rows else stored),
        )
    ]
    bias_target = base.resolve(module, "bias")
    if not feedforward and bias_target is not None:
        flat = vector.reshape(-1)
        edits.append(
            Edit(
                bias_target,
                module,
                "ia3",
                lambda w: w * vector.reshape(w.shape),
                rows=lambda block, rows: block.mul_(flat[rows]),
            )
        )
    return edits


def _lycoris_rank_alpha(module: str, config: dict[str, Any]) -> float:
    rank = int(pattern_value(config.get("rank_pattern"), module, config.get("r", 8)))
    alpha = float(pattern_value(config.get("alpha_pattern"), module, config.get("alpha", rank)))
    return alpha / rank


def _loha_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    if "hada_t1" in f or "hada_t2" in f:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a convolution; only linear layers export",
            adapter=label,
            module=module,
        )
    need_factors(f, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), module, label)
    w1a, w1b, w2a, w2b = (f[k] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"))
    scale = _lycoris_rank_alpha(module, config)
    target = target_tensor(base, module, label)
    check_shape(label, module, base.shape(target), (w1a.shape[0], w1b.shape[1]))
    return [
        Edit(target, module, "loha", lambda w: w + deltas.loha_delta(w1a, w1b, w2a, w2b, scale))
    ]


def _lokr_edits(
    module: str, f: dict[str, Tensor], config: dict[str, Any], base: BaseFolder, label: str, _: Any
) -> list[Edit]:
    if "lokr_t2" in f:
        raise IncompatibleAdapters(
            f"adapter {label}: module {module} is a convolution; only linear layers export",
            adapter=label,
            module=module,
        )
    w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
    w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
    scale = _lycoris_rank_alpha(module, config)
    target = target_tensor(base, module, label)
    shape = base.shape(target)
    check_shape(label, module, shape, (w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]))
    return [Edit(target, module, "lokr", lambda w: w + deltas.lokr_delta(w1, w2, scale, shape))]


def _vera_edits(
    module: str,
    f: dict[str, Tensor],
    config: dict[str, Any],
    base: BaseFolder,
    label: str,
    tensors: dict[str, Tensor],
) -> list[Edit]:
    shared_a = tensors.get("base_model.vera_A")
    shared_b = tensors.get("base_model.vera_B")
    if shared_a is None or shared_b is None:
        raise IncompatibleAdapters(
            f"adapter {label}: VeRA projections were not saved (save_projection=False);"
            " they cannot be rebuilt outside PEFT",
            adapter=label,
        )
    need_factors(f, ("vera_lambda_b", "vera_lambda_d"), module, label)
    fif = bool(config.get("fan_in_fan_out"))
    target = target_tensor(base, module, label)
    shape = base.shape(target)
    out_f, in_f = shape[::-1] if fif else shape
    lb, ld = f["vera_lambda_b"], f["vera_lambda_d"]
    check_shape(label, module + " (VeRA lambda_b)", (out_f,), tuple(lb.shape))
    return [
        Edit(
            target,
            module,
            "vera",
            lambda w: (
                w + deltas.vera_delta(shared_a, shared_b, ld, lb, out_f, in_f, fan_in_fan_out=fif)
            ),
        )
    ]


BUILDERS: dict[str, Callable[..., list[Edit]]] = {
    "lora": _lora_edits,
    "adalora": _adalora_edits,
    "ia3": _ia3_edits,
    "loha": _loha_edits,
    "lokr": _lokr_edits,
    "vera": _vera_edits,
}
