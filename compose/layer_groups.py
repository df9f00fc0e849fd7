"""Per-layer-group merge weights: one weight per input for each group of decoder layers.

A recipe's ``layer_groups`` lists groups of layer indexes, each with one weight per input;
a module takes the weights of the group holding its layer (``peft_patterns.layer_index``:
the first all-digit part of its name). A module outside the layers (``lm_head``,
``model.embed_tokens``) takes the **last** group's weights: there is no layer to place it by,
and the last group is the one next to the output head, the commonest such LoRA. Without
``layer_groups`` every module takes the recipe's ``weights``, as before.

Example:
    >>> split_layers([0, 1, 2, 3, 4], 2)
    [[0, 1, 2], [3, 4]]
    >>> weights = ModuleWeights({"layer_groups": [{"layers": [0, 1], "weights": [1.0, 0.0]},
    ...                                           {"layers": [2], "weights": [0.0, 1.0]}]})
    >>> weights("model.layers.2.mlp.up_proj"), weights("lm_head")
    ([0.0, 1.0], [0.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from compose.peft_patterns import layer_index
from schemas.errors import InvalidRecipe


def touched_layers(modules: Iterable[str]) -> list[int]:
    """The sorted layer indexes the ``modules`` sit in (modules outside the layers skipped)."""
    return sorted({i for m in modules if (i := layer_index(m)) is not None})


def split_layers(layers: Sequence[int], groups: int) -> list[list[int]]:
    """``layers`` (sorted) cut into ``groups`` contiguous runs of near-equal size, the first
    runs one longer when the count does not divide (as ``numpy.array_split``)."""
    size, extra = divmod(len(layers), groups)
    out, start = [], 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        out.append(list(layers[start:end]))
        start = end
    return out


def describe_layers(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"layers 0-2, 5"`` (for messages and the result's README)."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
    return ("layer " if len(layers) == 1 else "layers ") + text


class ModuleWeights:
    """One weight per input for a module: the recipe's ``weights``, or, with ``layer_groups``
    in ``params``, those of the group holding the module's layer.

    Raises (when called):
        InvalidRecipe: a module whose layer no group lists (naming the module and its layer).
    """

    def __init__(self, params: dict[str, Any]) -> None:
        self.groups: list[dict[str, Any]] | None = params.get("layer_groups")
        self.flat: list[float] | None = params.get("weights")
        self._group_of: dict[int, int] = {}
        for index, group in enumerate(self.groups or []):
            for layer in group["layers"]:
                self._group_of[layer] = index

    def group(self, module: str) -> int:
        """The index of the group whose weights ``module`` takes (0 without groups)."""
        if self.groups is None:
            return 0
        layer = layer_index(module)
        if layer is None:
            return len(self.groups) - 1
        if layer not in self._group_of:
            listed = "; ".join(describe_layers(g["layers"]) for g in self.groups)
            raise InvalidRecipe(
                f"layer_groups: module {module!r} is in layer {layer}, which no group lists"
                f" (the groups: {listed}); add layer {layer} to one group",
                field="layer_groups",
                module=module,
            )
        return self._group_of[layer]

    def __call__(self, module: str) -> list[float]:
        if self.groups is None:
            assert self.flat is not None
            return list(self.flat)
        return list(self.groups[self.group(module)]["weights"])
