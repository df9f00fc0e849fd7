"""``hub compose search``: one call of ``Registry.compose_search`` plus output formatting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.backends import registry_of
from cli.output import json_option, print_json
from schemas.errors import InvalidArgument


def _bounds(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise InvalidArgument(
            f"invalid --bounds {text!r}: expected LOW,HIGH, e.g. -1.5,1.5", field="bounds"
        ) from None
    return low, high


@click.command(name="search")
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="A few examples (JSONL: text rows, or prompt/target rows).",
)
@click.option("--name", required=True, help="Result repository NAMESPACE/NAME.")
@click.option(
    "--operator",
    type=click.Choice(["linear", "cat", "svd", "ties", "dare"]),
    default="linear",
    show_default=True,
    help="The merge whose weights are searched (each candidate is that exact merge).",
)
@click.option("--rank", help="svd/ties/dare: rank of the result, or 'auto' (with --energy).")
@click.option("--energy", type=float, help="With --rank auto: fraction kept (default 0.95).")
@click.option("--density", type=float, help="ties/dare: fraction of values kept.")
@click.option("--budget", type=int, default=40, show_default=True, help="Candidates scored.")
@click.option("--bounds", default="-1.5,1.5", show_default=True, help="LOW,HIGH per weight.")
@click.option("--l1", type=float, default=0.05, show_default=True, help="L1 penalty on weights.")
@click.option(
    "--holdout", type=float, default=0.2, show_default=True, help="Fraction of rows held out."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Split and search seed.")
@click.option(
    "--layer-groups",
    type=int,
    default=1,
    show_default=True,
    help="G: one weight per input for each of G contiguous groups of decoder layers (N*G"
    " weights; modules outside the layers take the last group's).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where candidates are scored.",
)
@click.option("--base", help="Base model folder or reference (default: the cards' base_model).")
@click.option(
    "--keep-anyway", is_flag=True, help="Store the result even if it loses to a baseline."
)
@click.option("--task", "tasks", multiple=True, help="Task label for the result (repeatable).")
@json_option
@click.pass_context
def search(ctx: click.Context, refs: tuple[str, ...], **options: Any) -> None:
    """Find merge weights on a few examples by gradient-free search (CMA-ES).

    Each candidate (one weight per input) is the exact merge `hub compose OPERATOR` would
    build, scored on the base model through hooks (no weights rewritten, the model loaded
    once): eval loss on the search rows plus --l1 times the sum of |weights|. The held-out
    rows then score the weights found against the best single input and uniform weights; the
    result is stored only if it beats both (or with --keep-anyway). Its lineage records the
    weights, the data's sha256, budget, seed and the search trace; `hub verify --rebuild`
    recomputes it, and the held-out comparison is attached as an eval record.

    --layer-groups G cuts the decoder layers the adapters touch into G contiguous groups of
    near-equal size by layer index (8 layers, G 3: 0-2, 3-5, 6-7) and searches one weight per
    input for each group; a module outside the layers (lm_head, embeddings) takes the last
    group's weights, and the L1 term is the mean over groups of the sum of |weights| (so it
    does not grow with G). The recipe then records each group's layers and weights
    (layer_groups), and `hub compose run` and `hub verify --rebuild` merge with them.

    \b
    Example:
        hub compose search team/sql-lora team/chat-lora --data few.jsonl --name team/mix \\
            --budget 40 --seed 1
        hub compose search team/sql-lora team/chat-lora --data few.jsonl --name team/mix2 \\
            --layer-groups 2 --budget 80
    """
    from cli.compose import _rank
    from compose.search import describe_weights

    as_json = options.pop("as_json")
    options["bounds"] = _bounds(options["bounds"])
    options["rank"] = _rank(options["rank"])
    options["tasks"] = list(options["tasks"])
    data = options.pop("data")
    quiet = as_json

    def progress(step: int, budget: int, loss: float) -> None:
        if not quiet:
            click.echo(f"candidate {step}/{budget}: loss {loss:.4f}", err=True)

    registry = registry_of(ctx)
    result = registry.compose_search(list(refs), data, progress=progress, **options)
    card, outcome = result.push.card, result.outcome
    h = outcome.holdout
    if as_json:
        print_json(
            {
                **card.model_dump(mode="json"),
                "search": {
                    "weights": outcome.weights,
                    **({"layer_groups": outcome.layout} if outcome.layout else {}),
                    "metric": outcome.metric,
                    "held_out": {k: v for k, v in h.items() if k != "scores"},
                    "seconds_per_candidate": outcome.seconds_per_candidate,
                    "eval_id": result.eval_record["id"],
                },
            }
        )
        return
    weights = describe_weights(outcome.weights, outcome.layout, digits=4, sep=",")
    click.echo(
        f"Composed {card.repo}@v{card.version} ({card.commit[:10]}) with weights {weights}"
        f": held-out {outcome.metric} loss {h['found']:.4f} vs best single"
        f" {h['best_single']:.4f}, uniform {h['uniform']:.4f}"
        f" ({len(outcome.trace)} candidates, {outcome.seconds_per_candidate * 1000:.0f} ms each)"
    )
    if not outcome.beats_baselines:
        click.echo("Warning: kept with --keep-anyway although a baseline scored better", err=True)
    warning = card.details.get("energy_warning")
    if warning:
        click.echo(f"Warning: {warning}", err=True)
