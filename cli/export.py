"""``hub export``: one call of ``Registry.export`` plus output formatting."""

from __future__ import annotations

from pathlib import Path

import click

from cli.backends import registry_of
from cli.output import human_size, json_option, print_json
from schemas.formats import DEVICES, DTYPES, FORMATS, GGUF_QUANTS, K_QUANTS


@click.command()
@click.argument("refs", nargs=-1)
@click.option(
    "--base",
    required=True,
    help="Base model: a Hugging Face model folder or a registry reference.",
)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Folder to create."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="safetensors",
    show_default=True,
    help="safetensors (merged shards), gguf (llama.cpp), gguf-lora, fp8 (vLLM), vllm-bundle.",
)
@click.option(
    "--dtype", type=click.Choice(DTYPES), help="Merged weights' dtype (default: the base's)."
)
@click.option(
    "--quant",
    type=click.Choice(GGUF_QUANTS + K_QUANTS, case_sensitive=False),
    help="GGUF type (default f16); K-quants need llama-cpp-python.",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    help="Where the merge runs for safetensors, gguf and fp8 (default auto: CUDA when"
    " available); cpu and cuda are refused for gguf-lora and vllm-bundle, which merge nothing.",
)
@click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
@json_option
@click.pass_context
def export(
    ctx: click.Context,
    refs: tuple[str, ...],
    base: str,
    output: Path,
    fmt: str,
    dtype: str | None,
    quant: str | None,
    device: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Export a base model with adapters merged in, quantized, or bundled for serving.

    REFS are adapter references (NS/NAME[@REV]) or folders, merged in the order given (a
    stack); with vllm-bundle they stay separate. With no REFS, the base alone is converted.
    Shapes are checked before anything is written; the output appears whole or not at all,
    and may not be, contain or be inside the registry folder. Adapters that no export
    reproduces are refused with the reason: aLoRA, PiSSA/OLoRA saved without
    path_initial_model_for_weight_conversion, config fields unknown to hub's PEFT.
    Methods the hub does not merge itself (OFT, BOFT, FourierFT, HRA... see the README's
    method table) go through PEFT's merge_and_unload, which holds the whole model in memory
    and writes safetensors only.

    With --device cuda (or auto on a machine with a GPU) each tensor an adapter changes is
    merged on the GPU in fp32 and rounded there; reading and writing stream on the CPU as
    before, and untouched tensors are copied as they are (fp8 and gguf quantize them on the
    GPU too). The result equals the CPU's
    within the float bound: a value may differ by one step of the output dtype where the
    fp32 sums differ in their last bits. PEFT-merged methods move the whole fp32 model to
    the GPU, which must hold it (use --device cpu otherwise).

    \b
    Example:
        hub export team/sql-lora@prod --base models/llama -o deploy/sql
        hub export team/sql-lora --base models/llama -o deploy/sql-gguf --format gguf --quant q8_0
        hub export team/sql-lora team/chat-lora --base models/llama -o deploy/bundle \\
            --format vllm-bundle
        hub export team/sql-lora --base models/llama -o deploy/sql-fp8 --format fp8 \\
            --device cuda
    """
    result = registry_of(ctx).export(
        list(refs),
        base=base,
        output=output,
        format=fmt,
        dtype=dtype,
        quant=quant,
        device=device,
        force=force,
    )
    if as_json:
        print_json(
            {
                "path": str(result.path),
                "format": result.format,
                "files": result.files,
                "size_bytes": result.size_bytes,
                "seconds": round(result.seconds, 3),
                "base": result.base,
                "adapters": result.adapters,
                "untied": result.untied,
                "details": result.details,
            }
        )
        return
    what = f"{len(result.adapters)} adapter(s)" if result.adapters else "no adapter"
    click.echo(
        f"Exported {result.path} ({result.format}, {what} on {result.base},"
        f" {human_size(result.size_bytes)}, {result.seconds:.1f}s)"
    )
    if "merge" in result.details:
        click.echo(f"Note: {result.details['merge']}")
    if "command" in result.details:
        click.echo(f"Serve with: {result.details['command']}")
