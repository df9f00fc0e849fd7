"""``hub compose``: one subcommand per operator, plus ``hub compose run RECIPE.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.backends import registry_of
from cli.output import human_size, json_option, print_json
from compose.operators import OPERATORS
from schemas.errors import InvalidRecipe
from schemas.formats import DEVICES

_EXAMPLES = {
    "cat": "hub compose cat team/sql-lora team/chat-lora --name team/sql-chat --weights 1,1",
    "linear": "hub compose linear team/sql-lora team/chat-lora --name team/mix --weights 0.5,0.5",
    "svd": "hub compose svd team/sql-lora team/chat-lora --name team/mix --rank 16",
    "ties": "hub compose ties team/a team/b --name team/ties --density 0.2 --rank auto"
    " --energy 0.95 --device cuda",
    "dare": "hub compose dare team/a team/b --name team/dare --density 0.3 --seed 7",
    "magnitude-prune": "hub compose magnitude-prune team/a team/b --name team/p --density 0.5",
    "stack": "hub compose stack team/domain-lora team/task-lora --name team/stacked",
    "average": "hub compose average team/bn-sst2 team/bn-imdb --name team/bn-sentiment",
    "ensemble": "hub compose ensemble team/p1 team/p2 team/p3 --name team/prompt-ensemble",
}


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise InvalidRecipe(
            f"invalid --weights {text!r}: expected comma-separated numbers, e.g. 0.7,0.3",
            field="weights",
        ) from None


def _report(result: Any, as_json: bool) -> None:
    card = result.card
    if as_json:
        print_json({**card.model_dump(mode="json"), "created": result.created})
        return
    energy = card.details.get("retained_energy")
    click.echo(
        f"Composed {card.repo}@v{card.version} ({card.commit[:10]}): {card.method}"
        + (f", rank {card.rank}" if card.rank else "")
        + f", {human_size(card.size_bytes)}"
        + (f", retained energy {energy:.2%}" if energy is not None else "")
    )
    warning = card.details.get("energy_warning")
    if warning:
        click.echo(f"Warning: {warning}", err=True)


def _rank(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise InvalidRecipe(
            f"invalid --rank {text!r}: expected a positive integer or 'auto'", field="rank"
        ) from None


device_option = click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Where the merge math runs (auto: CUDA when available).",
)


_PARAM_OPTIONS = {
    "rank": click.option(
        "--rank",
        help="Rank R of the result, or 'auto': per module the smallest rank keeping --energy.",
    ),
    "energy": click.option(
        "--energy",
        type=float,
        help="With --rank auto: fraction of each module's squared Frobenius norm kept"
        " (default 0.95).",
    ),
    "factor": click.option(
        "--factor",
        type=click.Choice(["randomized", "exact"]),
        help="How dense deltas are factored back: a checked randomized range finder"
        " (default; exact SVD where its 1e-5 bound cannot be shown) or the exact SVD.",
    ),
    "density": click.option("--density", type=float, help="Fraction of values kept, in (0, 1]."),
    "seed": click.option("--seed", type=int, help="Seed of the random drops (default 0)."),
    "variant": click.option(
        "--variant", type=click.Choice(["linear", "ties"]), help="DARE then sum, or then TIES."
    ),
    "majority_sign": click.option(
        "--majority-sign",
        type=click.Choice(["total", "frequency"]),
        default="total",
        show_default=True,
        help="How TIES elects each value's sign.",
    ),
    "average": click.option(
        "--average", is_flag=True, help="Write one averaged prompt instead of an ensemble."
    ),
}


def _operator_command(name: str) -> click.Command:
    spec = OPERATORS[name]

    def run(ctx: click.Context, refs: tuple[str, ...], **options: Any) -> None:
        as_json = options.pop("as_json")
        device = options.pop("device", "auto")  # stack, ensemble, average: no --device
        if "rank" in options:
            options["rank"] = _rank(options["rank"])
        recipe = {
            "operator": name,
            "inputs": list(refs),
            "name": options.pop("name"),
            "weights": _weights(options.pop("weights")),
            "tasks": list(options.pop("tasks")),
            "description": options.pop("description"),
            **{k: v for k, v in options.items() if v is not None},
        }
        from schemas.recipe import recipe_from_data

        registry = registry_of(ctx)
        _report(registry.compose(recipe_from_data(recipe, "command line"), device=device), as_json)

    command = click.pass_context(run)
    for param in sorted(spec.params, reverse=True):
        command = _PARAM_OPTIONS[param](command)
    command = json_option(command)
    if name not in ("stack", "ensemble", "average"):
        command = device_option(command)
    command = click.option("--description", help="Description for the result's card.")(command)
    command = click.option("--task", "tasks", multiple=True, help="Task label (repeatable).")(
        command
    )
    command = click.option("--weights", help="Comma-separated weights, one per input.")(command)
    command = click.option("--name", required=True, help="Result repository NAMESPACE/NAME.")(
        command
    )
    command = click.argument("refs", nargs=-1, required=True)(command)
    help_text = (
        f"{spec.summary[0].upper()}{spec.summary[1:]}.\n\nReference: {spec.reference}\n\n"
        f"\b\nExample:\n    {_EXAMPLES[name]}"
    )
    return click.command(name=name, help=help_text)(command)


class ComposeGroup(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            raise InvalidRecipe(
                f"unknown operator {cmd_name!r} (choose one of {', '.join(OPERATORS)},"
                " or `run RECIPE.yaml`)",
                field="operator",
            )
        return command


@click.group(cls=ComposeGroup)
def compose() -> None:
    """Combine adapters into a new adapter version: merges, stacks, ensembles.

    The result records its recipe and exact input commits; `hub verify --rebuild REF`
    recomputes it and checks it within the rounding bound of its dtype.

    \b
    Example:
        hub compose svd team/sql-lora team/chat-lora --name team/sql-chat --rank 16 \\
            --weights 0.6,0.4
        hub compose run merge.yaml
    """


for _name in OPERATORS:
    compose.add_command(_operator_command(_name))


@compose.command(name="run")
@click.argument("recipe", type=click.Path(path_type=Path))
@device_option
@json_option
@click.pass_context
def run_recipe(ctx: click.Context, recipe: Path, device: str, as_json: bool) -> None:
    """Run a reviewed recipe file (YAML), the same as the command-line form.

    \b
    Example recipe (merge.yaml):
        operator: svd
        name: team/sql-chat
        inputs: [team/sql-lora@v2, team/chat-lora@prod]
        weights: [0.6, 0.4]
        rank: 16
    \b
    Per-layer-group weights instead of `weights` (what `hub compose search
    --layer-groups` stores; modules outside the layers take the last group's):
        layer_groups:
          - {layers: [0, 1], weights: [0.9, 0.1]}
          - {layers: [2, 3], weights: [0.2, 0.8]}
    \b
    Example:
        hub compose run merge.yaml
    """
    import yaml

    from schemas.recipe import recipe_from_data

    try:
        data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InvalidRecipe(f"{recipe}: not valid YAML{where}") from None
    registry = registry_of(ctx)
    _report(registry.compose(recipe_from_data(data, str(recipe)), device=device), as_json)


from cli.compose_search import search  # noqa: E402

compose.add_command(search)
