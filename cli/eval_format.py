"""Text for the forgetting and cost results of eval records (`hub eval`, `hub show`,
`hub compare`): one place, so the three commands say the same thing the same way."""

from __future__ import annotations

from typing import Any

from cli.output import human_size

MODES = ("unmerged", "merged", "stack", "ensemble")
"""Cost modes besides the base, in the order they are shown."""


def format_forgetting(forgetting: dict[str, Any]) -> str:
    """``+0.0123 [+0.004, +0.021] nats/token (3.41 vs 3.40, 1,234 tokens)``."""
    lo, hi = forgetting["ci95"]
    return (
        f"{forgetting['value']:+.4g} [{lo:+.4g}, {hi:+.4g}] nats/token"
        f" ({forgetting['cross_entropy']:.4g} vs base {forgetting['base_cross_entropy']:.4g},"
        f" {forgetting['tokens']} tokens of {forgetting['dataset']['name']})"
    )


def _percent(value: float) -> str:
    return f"{value:+.1%}"


def _signed_size(value: int) -> str:
    return ("-" if value < 0 else "+") + human_size(abs(value))


def format_overhead_cell(entry: dict[str, Any] | None) -> str:
    """`hub compare`'s cell for one mode: ``+12.0%/+8.1% +1.2 MiB`` (prefill/decode, memory)."""
    if not entry:
        return ""
    return (
        f"{_percent(entry.get('prefill', 0.0))}/{_percent(entry.get('decode', 0.0))}"
        f" {_signed_size(entry['above_base_bytes'])}"
    )


def format_forgetting_cell(forgetting: dict[str, Any] | None) -> str:
    if not forgetting:
        return ""
    lo, hi = forgetting["ci95"]
    return f"{forgetting['value']:+.4g} [{lo:+.4g}, {hi:+.4g}]"


def format_overhead(cost: dict[str, Any], mode: str) -> str:
    """One mode's overhead against the base: ``prefill +12.0%, decode +8.1%, +1.2 MiB``."""
    entry = cost["modes"][mode]
    over = entry.get("overhead") or {}
    return (
        f"prefill {_percent(over.get('prefill', 0.0))}, decode {_percent(over.get('decode', 0.0))}"
        f", {_signed_size(entry['above_base_bytes'])}"
    )


def extra_lines(record: dict[str, Any]) -> list[str]:
    """The trainer, forgetting and cost lines of a record, for `hub eval` and `hub show`."""
    lines = []
    trainer = record.get("trainer")  # trainer_state.json's record (hub.checkpoints)
    if trainer:
        step = trainer.get("step")
        text = f"trainer: weights of step {step if step is not None else '?'}"
        text += f" of {trainer.get('global_step')}"
        best = trainer.get("best")
        if best:
            text += f"; best {best['name']}={best['value']:.4g} at step {best['step']}"
            text += {True: " (these weights)", False: " (other weights)"}.get(
                best.get("these_weights"), ""
            )
        text += f"; {len(trainer.get('log_history') or [])} evaluations logged"
        lines.append(text)
        lines += [f"note: {note}" for note in trainer.get("notes") or []]
    if record.get("forgetting"):
        lines.append("forgetting: " + format_forgetting(record["forgetting"]))
    cost = record.get("cost")
    if cost:
        for mode in ("base", *MODES):
            if mode not in cost["modes"]:
                continue
            entry = cost["modes"][mode]
            config = entry["configs"][-1]
            prefill = config["prefill_ms"]
            lines.append(
                f"cost {mode}: "
                + (format_overhead(cost, mode) + "; " if mode != "base" else "")
                + f"b{config['batch']}x{config['prompt_tokens']} prefill"
                f" {prefill['median']:.3g} ms (p90 {prefill['p90']:.3g}, spread"
                f" {prefill['spread']:.0%}), decode {config['decode_tokens_per_s']:.4g} tok/s"
            )
        load = f"cost load: adapter {cost['adapter_load_seconds']:.3g}s"
        if cost.get("merge"):
            merge = cost["merge"]
            load += (
                f", merge {merge['seconds']:.3g}s (max logit diff {merge['max_logit_diff']:.3g},"
                f" greedy agreement {merge['greedy_token_agreement']:.1%})"
            )
        elif cost.get("merge_note"):
            load += f"; not merged: {cost['merge_note']}"
        if cost.get("prompt"):
            prompt = cost["prompt"]
            load += f"; {prompt['extra_tokens']} extra tokens per sequence"
        lines.append(load)
    return lines
