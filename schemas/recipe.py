"""Compose recipes: the reviewed-file form of ``hub compose OP REF... --name NS/NAME``.

A recipe YAML is validated up front (unknown keys refused, each error naming its field), and
is what a composite's card records so ``hub verify --rebuild`` can recompute and check it
(within the rounding bound of its dtype: see ``compose.reproduce``).

Example recipe::

    operator: svd
    name: team/sql-chat
    inputs: [team/sql-lora@v2, team/chat-lora@prod]
    weights: [0.7, 0.3]
    rank: 16

Per-layer-group weights (what ``hub compose search --layer-groups 2`` stores) instead of
``weights``: each group lists its decoder layers and one weight per input; a module outside
the layers (``lm_head``, embeddings) takes the last group's weights (``compose.layer_groups``)::

    layer_groups:
      - {layers: [0, 1], weights: [0.9, 0.1]}
      - {layers: [2, 3], weights: [0.2, 0.8]}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from schemas.refs import AdapterRef, validate_repo_id

Operator = Literal[
    "linear", "svd", "cat", "ties", "dare", "magnitude-prune", "stack", "average", "ensemble"
]


class LayerGroup(BaseModel):
    """The weights of the modules in some decoder layers (``Recipe.layer_groups``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: list[Annotated[StrictInt, Field(ge=0)]] = Field(
        min_length=1, description="Decoder layer indexes."
    )
    weights: list[FiniteFloat] = Field(description="One weight per input, in input order.")


class Recipe(BaseModel):
    """One composition: an operator, its ordered inputs and its parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operator: Operator
    name: str = Field(description="Repository id of the result, NAMESPACE/NAME.")
    inputs: list[str] = Field(min_length=1, description="Adapter references, in order.")
    weights: list[FiniteFloat] | None = Field(
        default=None, description="One weight per input (default: 1 each; svd/linear/average: 1/N)."
    )
    layer_groups: list[LayerGroup] | None = Field(
        default=None,
        min_length=1,
        description="Instead of weights: groups of decoder layers, each with one weight per"
        " input (cat, linear, svd, ties, dare, magnitude-prune); modules outside the layers"
        " take the last group's weights.",
    )
    rank: int | Literal["auto"] | None = Field(
        default=None,
        description="Rank of the result (LoRA ops), or 'auto': per module the smallest rank"
        " keeping `energy` of the squared Frobenius norm.",
    )
    energy: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="With rank 'auto': the fraction of the squared Frobenius norm kept per"
        " module (default 0.95).",
    )
    factor: Literal["randomized", "exact"] | None = Field(
        default=None,
        description="ties/dare/magnitude-prune (and dense linear/svd): how the dense delta is"
        " factored back (default randomized: a checked range finder, exact SVD as fallback).",
    )
    density: float | None = Field(
        default=None, gt=0, le=1, description="Fraction of values kept (ties, dare, prune)."
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**64 - 1, description="Seed for dare's random drops (64 bits)."
    )
    variant: Literal["linear", "ties"] | None = Field(
        default=None, description="dare only: rescaled sum (linear) or TIES sign election."
    )
    majority_sign: Literal["total", "frequency"] = Field(
        default="total", description="ties / dare-ties: how the sign of each value is elected."
    )
    average: bool = Field(
        default=False, description="ensemble only: one averaged prompt instead of N prompts."
    )
    tasks: list[str] = Field(default_factory=list)
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return validate_repo_id(value)

    @field_validator("rank", mode="before")
    @classmethod
    def _valid_rank(cls, value: object) -> object:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"rank must be a positive integer or 'auto', got {value!r}")
        return value

    @field_validator("inputs")
    @classmethod
    def _valid_inputs(cls, value: list[str]) -> list[str]:
        for ref in value:
            AdapterRef.parse(ref)
        return value

    @model_validator(mode="after")
    def _weights_match_inputs(self) -> Recipe:
        if self.weights is not None and len(self.weights) != len(self.inputs):
            raise ValueError(
                f"weights: {len(self.weights)} weights for {len(self.inputs)} inputs"
                " (give one weight per input)"
            )
        if self.layer_groups is not None:
            self._check_layer_groups(self.layer_groups)
        if self.energy is not None and self.rank != "auto":
            raise ValueError("energy: only with rank 'auto' (--rank auto --energy E)")
        return self

    def _check_layer_groups(self, groups: list[LayerGroup]) -> None:
        if self.weights is not None:
            raise ValueError(
                "weights: give the weights once, for all layers (weights) or per layer group"
                " (layer_groups[].weights), not both"
            )
        owner: dict[int, int] = {}
        for index, group in enumerate(groups):
            if len(group.weights) != len(self.inputs):
                raise ValueError(
                    f"layer_groups.{index}.weights: {len(group.weights)} weights for"
                    f" {len(self.inputs)} inputs (give one weight per input)"
                )
            for layer in group.layers:
                if layer in owner:
                    raise ValueError(
                        f"layer_groups.{index}.layers: layer {layer} is also in group"
                        f" {owner[layer]} (each layer belongs to one group)"
                    )
                owner[layer] = index


def recipe_from_data(data: object, source: str) -> Recipe:
    """Validate parsed recipe data; raise ``InvalidRecipe`` naming ``source`` and the field.

    Example:
        >>> recipe_from_data({"operator": "svd", "name": "a/b", "inputs": ["x/y"], "rnk": 4},
        ...                  "merge.yaml")
        Traceback (most recent call last):
        schemas.errors.InvalidRecipe: merge.yaml: field 'rnk': not a recipe field ...
    """
    from pydantic import ValidationError

    from schemas.errors import HubError, InvalidRecipe

    if not isinstance(data, dict):
        raise InvalidRecipe(f"{source}: a recipe is a mapping of fields (operator, name, inputs)")
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, HubError):  # e.g. an invalid reference in inputs
            message = str(cause)
        elif first["type"] == "extra_forbidden":
            if first["loc"][0] == "layer_groups":
                fields = ", ".join(LayerGroup.model_fields)
                message = f"not a layer group field (fields: {fields})"
            else:
                fields = ", ".join(Recipe.model_fields)
                message = f"not a recipe field (fields: {fields})"
        else:
            message = first["msg"].removeprefix("Value error, ")
        where = f"field {location!r}: " if location else ""
        raise InvalidRecipe(f"{source}: {where}{message}", field=location) from None
