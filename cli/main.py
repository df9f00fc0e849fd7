"""The ``hub`` command line. Each command is one call of the Python API plus formatting.

torch, transformers and peft are never imported at start-up: read commands answer fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from cli.backends import db_option, registry_of, root_db_option
from cli.errors import format_error
from cli.output import (
    CARD_HEADERS,
    card_rows,
    human_size,
    json_option,
    print_card,
    print_json,
    print_json_texts,
    print_table,
)
from schemas.errors import HubError


class HubGroup(click.Group):
    """Turns every error into one ``Error: ...`` line and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (HubError, OSError) as error:
            if os.environ.get("HUB_DEBUG"):
                raise
            click.echo(format_error(error), err=True)
            ctx.exit(1)


_registry = registry_of


@click.group(cls=HubGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="HUB_HOME",
    help="Registry folder (default: $HUB_HOME, else a per-user data directory).",
)
@root_db_option
@click.version_option(package_name="hub-adapters", prog_name="hub")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, db: str | None, store: str | None) -> None:
    """hub: find, share, combine and ship PEFT adapters.

    \b
    Example:
        hub push out/sql-lora --name team/sql-lora --task sql --metric exact_match=0.71@spider
        hub ls --method lora --rank '<=16' --task sql --sort metric:exact_match
        hub pull team/sql-lora@v1 -o adapters/sql
    """
    ctx.obj = {"home": home, "db": db, "store": store}


@cli.command()
@db_option
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="Repository id NAMESPACE/NAME (default: <user>/<folder name>).")
@click.option("--task", "tasks", multiple=True, help="Task label, e.g. sql (repeatable).")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="KEY=VALUE tag (repeatable); optimizer=lorafa declares a LoRA-FA run (lora_A frozen:"
    " left out of params_trained).",
)
@click.option(
    "--metric", "metrics", multiple=True, help="NAME=VALUE[@DATASET] result (repeatable)."
)
@click.option("--parent", help="Adapter this one was trained on top of (NS/NAME[@REV]).")
@click.option("--description", help="Override the description read from README.md.")
@click.option(
    "--allow-nonfinite", is_flag=True, help="Accept tensors that contain NaN or Inf values."
)
@click.option("--to", "remote", envvar="HUB_REMOTE", help="Push to a team hub at this URL.")
@click.option(
    "--checkpoints",
    is_flag=True,
    help="PATH is a Trainer output_dir: push each checkpoint-<step>/ as a version, in step"
    " order, with its step and logged metrics.",
)
@json_option
@click.pass_context
def push(
    ctx: click.Context,
    path: Path,
    name: str | None,
    tasks: tuple[str, ...],
    tags: tuple[str, ...],
    metrics: tuple[str, ...],
    parent: str | None,
    description: str | None,
    allow_nonfinite: bool,
    remote: str | None,
    checkpoints: bool,
    as_json: bool,
) -> None:
    """Register an adapter folder (what PEFT's save_pretrained wrote) as a new version.

    The folder is checked first (config, tensor headers, shapes, NaN/Inf); nothing is
    stored if anything is wrong. Pushing identical files again creates no new version.
    Config fields a newer PEFT wrote are kept on the card, with one warning on stderr.
    Training state (checkpoint-<step>/, optimizer.pt, scheduler.pt, rng_state.pth,
    training_args.bin, trainer_state.json...) is left out; --checkpoints pushes a Trainer's
    checkpoints as versions instead. mlx-lm and torchtune adapters: `hub convert` first.
    AdapterHub saves (adapters' save_adapter with use_safetensors=True: bottleneck, Compacter,
    prefix, LoRA, IA3, MAM/UniPELT) are read as they are (library: adapters).
    A multi-adapter save (one subfolder per adapter besides default) becomes one repository
    per adapter: NAME for default, NAME-ADAPTER for each other one (with --to as well).

    Hidden files and __pycache__ are skipped; a link inside the folder is stored as the
    file it points to; links leaving the folder, FIFOs and devices are refused.

    \b
    Example:
        hub push out/sql-lora --name team/sql-lora --task sql --tag team=nlp \\
            --metric exact_match=0.71@spider
        hub push out/trainer-run --checkpoints --name team/sql-lora
    """
    from hub.hf_interop import is_hf

    # The same options for each way of pushing (checkpoints, a team hub, the local registry).
    options: dict[str, Any] = dict(
        name=name,
        tasks=tasks,
        tags=list(tags),
        metrics=metrics,
        parent=parent,
        description=description,
        allow_nonfinite=allow_nonfinite,
    )
    if checkpoints:
        if remote:
            from schemas.errors import InvalidArgument

            raise InvalidArgument(
                "--checkpoints pushes to the local registry: push each checkpoint folder with"
                " --to instead"
            )
        results = _registry(ctx).push_checkpoints(path, **options)
        if as_json:
            print_json(
                [
                    {**r.card.model_dump(mode="json"), "created": r.created, "left_out": r.left_out}
                    for r in results
                ]
            )
        else:
            _echo_checkpoints(results)
        return

    if is_hf(remote):
        from hub.hf_interop import push_to_hf

        commit = push_to_hf(_registry(ctx), str(path), str(remote))
        click.echo(f"Pushed {path} to {remote} (commit {commit[:10]})")
        return
    if remote:
        from cli.remote import remote_registry

        result = remote_registry(remote).push_result(path, **options)
    else:
        result = _registry(ctx).push(path, **options)
    card = result.card
    unknown = card.details.get("unknown_config_keys")
    if unknown:
        from compose.peft_config import PEFT_VERSION

        click.echo(
            f"Warning: {path / 'adapter_config.json'}: field(s) {', '.join(map(repr, unknown))}"
            f" unknown to PEFT {PEFT_VERSION}, kept on the card as unknown_config_keys;"
            " export and compose refuse to merge it while one of them is on",
            err=True,
        )
    if as_json:
        body = {
            **card.model_dump(mode="json"),
            "created": result.created,
            "left_out": result.left_out,
        }
        if result.others:  # a multi-adapter folder: one repository per adapter
            body["others"] = [
                {**r.card.model_dump(mode="json"), "created": r.created} for r in result.others
            ]
        print_json(body)
        return
    for one in [result, *result.others]:
        _echo_pushed(one)
    if result.left_out:
        hint = (
            f" (push the checkpoints as versions with `hub push {path} --checkpoints`)"
            if any(p.startswith("checkpoint-") for p in result.left_out)
            else ""
        )
        click.echo(f"Left out training state: {', '.join(result.left_out)}{hint}")


def _echo_pushed(result: Any, extra: str = "") -> None:
    card = result.card
    if result.created:
        rank = f", rank {card.rank}" if card.rank is not None else ""
        click.echo(
            f"Pushed {card.repo}@v{card.version} ({card.commit[:10]}): "
            f"{card.method}{rank}, {human_size(card.size_bytes)}{extra}"
        )
    else:
        click.echo(
            f"Unchanged: {card.repo}@v{card.version} ({card.commit[:10]}) already has these files"
        )


def _echo_checkpoints(results: list[Any]) -> None:
    for result in results:
        logged = "".join(
            f", {m.name}={m.value:.4g}" for m in result.card.metrics if m.source == "trainer"
        )
        _echo_pushed(result, f", step {result.card.tags.get('step')}{logged}")
    left_out = sorted({p.rsplit("/", 1)[-1] for r in results for p in r.left_out})
    if left_out:
        click.echo(f"Left out training state in each checkpoint: {', '.join(left_out)}")


@cli.command()
@db_option
@click.argument("ref")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Folder to write (default: ./NAME)."
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--from", "remote", envvar="HUB_REMOTE", help="Pull from a team hub at this URL.")
@click.option(
    "--with-evals",
    is_flag=True,
    help="Write the version's metrics into README.md's front matter as a Hugging Face"
    " model-index (the README then differs from the pushed one).",
)
@click.pass_context
def pull(
    ctx: click.Context,
    ref: str,
    output: Path | None,
    force: bool,
    remote: str | None,
    with_evals: bool,
) -> None:
    """Write an adapter folder that PeftModel.from_pretrained loads, byte for byte as pushed.

    REF is NAMESPACE/NAME[@REV]; REV is a version (v3), an alias (prod), a commit id
    (at least 7 hex) or main (the latest, also the default). hf://ORG/NAME[@REV] pulls
    from a Hugging Face Hub (HF_ENDPOINT, HF_TOKEN). The output folder may not be, contain
    or be inside the registry folder.

    \b
    Example:
        hub pull team/sql-lora@prod -o adapters/sql
        hub pull team/sql-lora@prod -o adapters/sql --with-evals
    """
    if ref.startswith("hf://"):
        from hub.hf_interop import pull_from_hf

        if with_evals:
            from schemas.errors import InvalidArgument

            raise InvalidArgument("--with-evals pulls from a hub registry, not hf://")
        click.echo(f"Pulled {ref} into {pull_from_hf(ref, output, force=force)}")
        return
    if remote:
        from cli.remote import remote_registry

        registry: Any = remote_registry(remote)
    else:
        registry = _registry(ctx)
    # With evals, resolved once: the README gets, and the report says, this exact version's.
    card = registry.show(ref) if with_evals else None
    dest = registry.pull(card.ref if card else ref, output, force=force, with_evals=with_evals)
    click.echo(f"Pulled {ref} into {dest}")
    if card is not None:
        from hub.model_index import model_index

        click.echo(_model_index_line(*model_index(card)))


def _model_index_line(index: list[dict[str, Any]], left_out: list[str]) -> str:
    """What `pull --with-evals` put into the README, and what it could not."""
    written = sum(len(r["metrics"]) for m in index for r in m["results"])
    text = f"model-index in README.md: {written} metric{'s' * (written != 1)}"
    if not index:
        text = "model-index: none written"
    if left_out:
        text += f"; left out (no dataset, which model-index requires): {', '.join(left_out)}"
    elif not index:
        text += " (the version has no metrics)"
    return text


@cli.command(name="ls")
@db_option
@click.argument("query", required=False)
@click.option("--base", help="Base model id (exact, or a glob such as 'meta-llama/*').")
@click.option("--method", help="lora, dora, adalora, ia3, loha, lokr, oft, boft, vera, ...")
@click.option(
    "--library", help="peft or adapters (AdapterHub's bottleneck adapters, Compacter, MAM...)."
)
@click.option("--rank", help="N, LOW..HIGH, <=N, <N, >=N or >N.")
@click.option("--task", "tasks", multiple=True, help="Task label (repeatable: all must match).")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE or KEY (repeatable).")
@click.option(
    "--sort",
    help="name, created, rank, size, params, method, base or metric:NAME[@DATASET];"
    " prefix + or - for ascending/descending (metrics: best first by default).",
)
@click.option(
    "--where",
    "where",
    multiple=True,
    help="metric:NAME[@DATASET]OP VALUE, or FIELD OP VALUE on a card field (variant, rank,"
    " or a details key: reduction_factor, placement...; = on a list means contains);"
    " OP one of >= <= > < = != (repeatable: all must hold).",
)
@click.option("--limit", type=int, help="At most N results (0 to 100000).")
@click.option("--all-versions", is_flag=True, help="Every version, not just the latest.")
@click.option("--from", "remote", envvar="HUB_REMOTE", help="Search a team hub at this URL.")
@json_option
@click.pass_context
def ls(
    ctx: click.Context,
    query: str | None,
    base: str | None,
    method: str | None,
    library: str | None,
    rank: str | None,
    tasks: tuple[str, ...],
    tags: tuple[str, ...],
    sort: str | None,
    where: tuple[str, ...],
    limit: int | None,
    all_versions: bool,
    remote: str | None,
    as_json: bool,
) -> None:
    """Find adapters: free text over names, descriptions and tasks, plus filters.

    Lists the latest version of each adapter. A metric's value on a version is the one
    `hub show` and card.metric() give: the latest from the most trusted source (hub-eval
    before trainer before push/manual/model-index); metrics sort best first (lower first for
    losses and perplexity).

    \b
    Example:
        hub ls sql --base meta-llama/Llama-3-8B --method lora --rank '<=16' \\
            --tag team=nlp --sort metric:exact_match --limit 5 --json
        hub ls --where 'metric:exact_match@spider>=0.7' --sort metric:exact_match@spider
        hub ls --library adapters --where placement=after_ffn --where 'reduction_factor>=8'
    """
    filters: dict[str, Any] = dict(
        base=base,
        method=method,
        library=library,
        rank=rank,
        tasks=tasks,
        tags=tags,
        sort=sort,
        limit=limit,
        all_versions=all_versions,
        where=where,
    )
    if remote:
        from cli.remote import remote_registry

        cards = [json.dumps(c) for c in remote_registry(remote).search_raw(query, **filters)]
    else:
        cards = _registry(ctx).search_json(query, **filters)
    if as_json:
        print_json_texts(cards)
    elif cards:
        print_table(CARD_HEADERS, card_rows([json.loads(card) for card in cards]))
    else:
        click.echo("No adapters match.", err=True)


@cli.command()
@db_option
@click.argument("ref")
@click.option("--versions", is_flag=True, help="List every version of the repository.")
@click.option("--from", "remote", help="Show a version of a team hub at this URL (HUB_TOKEN).")
@json_option
@click.pass_context
def show(ctx: click.Context, ref: str, versions: bool, remote: str | None, as_json: bool) -> None:
    """Show an adapter's card: method, rank, targets, params, metrics, files, lineage, and
    its eval records (with --from: the server's, and those `hub eval --from` kept here).

    \b
    Example:
        hub show team/sql-lora@v2
        hub show team/sql-lora --versions --json
        hub show team/sql-lora --from http://hub.internal:8000
    """
    if remote and not versions:
        from cli.remote import remote_registry
        from hub.remote_evals import kept_records

        client = remote_registry(remote)
        shown = client.show(ref)
        evals = client.evals(shown.ref) + kept_records(_registry(ctx), client.url, shown)
        if as_json:
            print_json({**shown.model_dump(mode="json"), "evals": evals})
        else:
            print_card(shown.model_dump(mode="json"), evals)
        return
    registry = _registry(ctx)
    if versions:
        from schemas.refs import AdapterRef

        cards = [c.model_dump(mode="json") for c in registry.versions(AdapterRef.parse(ref).repo)]
        if as_json:
            print_json(cards)
        else:
            print_table(CARD_HEADERS, card_rows(cards))
        return
    card = registry.show(ref).model_dump(mode="json")
    evals = registry.evals(card["repo"] + "@" + card["commit"])
    if as_json:
        print_json({**card, "evals": evals})
    else:
        print_card(card, evals)


@cli.command()
@db_option
@click.argument("ref")
@click.pass_context
def rm(ctx: click.Context, ref: str) -> None:
    """Remove a repository (NS/NAME) or one version (NS/NAME@v2). `hub gc` frees the space.

    \b
    Example:
        hub rm team/sql-lora@v1
    """
    removed = _registry(ctx).remove(ref)
    for card in removed:
        click.echo(f"Removed {card.repo}@v{card.version} ({card.commit[:10]})")
    if not removed:
        click.echo(f"Removed {ref} (it had no version yet)")


@cli.command()
@db_option
@click.argument("ref")
@click.argument("alias")
@click.pass_context
def tag(ctx: click.Context, ref: str, alias: str) -> None:
    """Point ALIAS (e.g. prod) at a version; moves the alias if it exists.

    \b
    Example:
        hub tag team/sql-lora@v3 prod      # then: hub pull team/sql-lora@prod
    """
    card = _registry(ctx).tag(ref, alias)
    click.echo(f"{card.repo}@{alias} -> v{card.version} ({card.commit[:10]})")


@cli.command()
@db_option
@click.option(
    "--rebuild",
    "rebuild_ref",
    metavar="REF",
    help="Recompute the composite REF from its recipe and compare it: tensors within the"
    " rounding bound of their dtype (BLAS results differ per CPU and thread count), other"
    " files byte for byte.",
)
@json_option
@click.pass_context
def verify(ctx: click.Context, rebuild_ref: str | None, as_json: bool) -> None:
    """Re-hash every stored file and name the versions whose bytes are damaged.

    Exits 1 when anything is missing or corrupted, when the index is damaged (or missing
    next to stored blobs), or, with --rebuild, when the rebuilt files differ beyond the
    rounding bound.

    \b
    Example:
        hub verify
        hub verify --rebuild team/sql-chat@v1
    """
    if rebuild_ref is not None:
        rebuilt = _registry(ctx).rebuild(rebuild_ref)
        if as_json:
            print_json(rebuilt.as_dict())
        elif rebuilt.matches:
            click.echo(f"Rebuilt {rebuilt.ref}: {_rebuild_summary(rebuilt)}")
        if not rebuilt.matches:
            click.echo(
                f"Error: rebuilding {rebuilt.ref} does not reproduce it: "
                + "; ".join(f"{f.path} ({f.reason})" for f in rebuilt.files if not f.ok)
                + ". The stored composite is not what its recipe and inputs compute",
                err=True,
            )
            ctx.exit(1)
        return
    report = _registry(ctx).verify()
    if as_json:
        print_json(
            {
                "healthy": report.healthy,
                "blobs_checked": report.blobs_checked,
                "bytes_checked": report.bytes_checked,
                "orphan_blobs": report.orphan_blobs,
                "pending_uploads": report.pending_uploads,
                "database": report.database,
                "problems": [vars(p) for p in report.problems],
            }
        )
    else:
        click.echo(
            f"Checked {report.blobs_checked} blobs ({human_size(report.bytes_checked)}),"
            f" database: {'ok' if report.database == 'ok' else 'DAMAGED'},"
            f" orphan blobs: {report.orphan_blobs}"
            + (" (remove with `hub gc`)" if report.orphan_blobs else "")
            + (
                f", uploads awaiting their commit: {report.pending_uploads}"
                if report.pending_uploads
                else ""
            )
        )
    if not report.healthy:
        for problem in report.problems:
            click.echo(
                f"Error: blob {problem.digest[:12]} is {problem.status}; affected: "
                + ", ".join(problem.versions),
                err=True,
            )
        if report.database != "ok":
            click.echo(f"Error: index database: {report.database}", err=True)
        ctx.exit(1)
    elif not as_json:
        click.echo("Registry is healthy.")


def _rebuild_summary(rebuilt: Any) -> str:
    identical = sum(f.status == "identical" for f in rebuilt.files)
    if rebuilt.identical:
        return f"matches, bit for bit ({identical} files identical)."
    numeric = [f for f in rebuilt.files if f.status == "within_bound"]
    tensors = sum(f.tensors_checked for f in numeric)
    return (
        f"matches within the rounding bound ({identical} files identical; {tensors} tensors in"
        f" {', '.join(f.path for f in numeric)} differ by at most {rebuilt.max_relative:.1e}"
        f" relative, {rebuilt.max_bound_fraction:.0%} of the bound)."
    )


@cli.command()
@db_option
@json_option
@click.pass_context
def gc(ctx: click.Context, as_json: bool) -> None:
    """Delete stored files no version references (after `hub rm` or an interrupted push).

    Files uploaded to `hub serve` for a commit not yet made are kept for 24 hours, and
    uploads still in progress are left alone: gc may run while the server takes pushes.
    Also removes scratch folders under the registry's tmp/ that killed commands left. Refuses,
    deleting nothing, when the index is missing, empty or damaged next to a non-empty store.

    \b
    Example:
        hub gc
    """
    report = _registry(ctx).gc()
    if as_json:
        print_json(vars(report))
    else:
        line = f"Removed {report.blobs_removed} blobs, freed {human_size(report.bytes_freed)}"
        if report.uploads_kept == 1:
            line += "; kept 1 upload awaiting its commit"
        elif report.uploads_kept:
            line += f"; kept {report.uploads_kept} uploads awaiting their commit"
        if report.scratch_removed:
            line += f"; removed {report.scratch_removed} abandoned scratch folders"
        click.echo(line)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Folder to write (default: PATH-safetensors for adapter_model.bin, else PATH-peft).",
)
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="Base model folder: required for torchtune (architecture); for mlx-lm, checks the"
    " modules and names the base.",
)
@click.option(
    "--alpha",
    type=float,
    help="torchtune without adapter_config.json: the lora_alpha it was trained with.",
)
@click.pass_context
def convert(
    ctx: click.Context, path: Path, output: Path | None, base: Path | None, alpha: float | None
) -> None:
    """Convert an adapter into a PEFT folder that `hub push` takes, safely.

    \b
    Recognised from the files:
      adapter_model.bin     PEFT's pickle -> adapter_model.safetensors
      pytorch_adapter.bin   AdapterHub's pickle (and pytorch_model_head.bin) ->
                            adapter.safetensors (model_head.safetensors)
      adapters.safetensors  mlx-lm LoRA -> PEFT LoRA (lora_a/lora_b transposed,
                            lora_alpha = scale * rank)
      adapter_model.pt      torchtune LoRA -> PEFT LoRA for --base (names mapped,
                            q/k rows back in Hugging Face order)
    Pickles are read with torch.load(weights_only=True), which refuses arbitrary code.

    \b
    Example:
        hub convert old-adapter -o old-adapter-st && hub push old-adapter-st --name team/old
        hub convert mlx-run/adapters -o sql-peft && hub push sql-peft --name team/sql
        hub convert tune-out/epoch_0 --base models/llama -o sql-peft
    """
    from hub.convert import convert_adapter

    converted = convert_adapter(path, output, base=base, alpha=alpha)
    if converted.source in ("peft-bin", "adapters-bin"):
        click.echo(f"Wrote {converted.path}")
    else:
        click.echo(
            f"Wrote {converted.path}: PEFT LoRA from {converted.source}, {converted.summary}"
        )


from cli.compare import compare_command  # noqa: E402 (command modules register at the bottom)
from cli.compose import compose  # noqa: E402
from cli.db import db  # noqa: E402
from cli.eval import eval_command, metric  # noqa: E402
from cli.export import export  # noqa: E402
from cli.migrate import migrate  # noqa: E402
from cli.remote import serve, token  # noqa: E402
from cli.ui import ui  # noqa: E402

cli.add_command(compare_command)
cli.add_command(compose)
cli.add_command(eval_command)
cli.add_command(metric)
cli.add_command(export)
cli.add_command(serve)
cli.add_command(token)
cli.add_command(ui)
cli.add_command(db)
cli.add_command(migrate)


def main() -> None:
    cli(prog_name="hub")


if __name__ == "__main__":  # pragma: no cover
    main()
