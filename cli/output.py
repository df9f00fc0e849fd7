"""Output formatting shared by every command: JSON, tables, sizes. Only ``cli`` prints."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    """``--json``: machine-readable output instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(
        func
    )


def print_json(data: Any) -> None:
    """Indented JSON for one object; a list is written one compact item per line.

    ``json.dumps(indent=...)`` falls back to the pure-Python encoder, ten times slower than the
    C one: on 10,000 cards that is seconds. One item per line stays readable and greppable.
    """
    if isinstance(data, list):
        print_json_texts([json.dumps(item, default=str) for item in data])
    else:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_json_texts(items: list[str]) -> None:
    """A JSON list from items that are already JSON text, one per line."""
    sys.stdout.write("[\n" + ",\n".join(items) + "\n]\n" if items else "[]\n")


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


LEDGER_LABELS = {
    "params_trained": "trained params",
    "params_stored": "stored params",
    "params_changed_when_merged": "changed (merged)",
    "params_extra_at_inference": "extra (unmerged)",
}
"""``hub show``'s line for each count of the parameter ledger (schemas.card.LEDGER)."""


def ledger_count(card: dict[str, Any], name: str, digits: int = 4) -> str:
    """``5.6K (0.0123% of 45.3K)``, ``-`` when unknown (a card from before the ledger reads
    its stored count from ``params_trainable``)."""
    value = card.get(name, card.get("params_trainable") if name == "params_stored" else None)
    fraction = card.get(f"{name}_fraction")
    if fraction is None and name == "params_stored":
        fraction = card.get("params_fraction")
    text = human_count(value)
    if value is not None and fraction is not None:
        text += f" ({fraction:.{digits}%} of {human_count(card.get('params_base'))})"
    return text


def ledger_lines(card: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The ledger's ``hub show`` lines; an unknown count says why."""
    unknown = card.get("params_unknown") or {}
    lines: list[tuple[str, str | None]] = []
    for name, label in LEDGER_LABELS.items():
        text = ledger_count(card, name)
        if name in unknown:
            text += f" (unknown: {unknown[name]})"
        lines.append((label, text))
    frozen = card.get("params_stored_frozen")
    if frozen:
        lines.append(("stored frozen", human_count(frozen)))
    return lines


def method_label(card: dict[str, Any]) -> str:
    method = str(card["method"])
    return f"{method}:{card['variant']}" if card.get("variant") else method


# C0/C1 controls (escape sequences, carriage returns, newlines) and the bidirectional
# overrides: text from adapters (tasks, tags, descriptions, file names) must not be able to
# move the cursor, recolour the terminal or reorder what a table shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with terminal control characters written as escapes (``\\x1b``, ``\\n``)."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table; columns as wide as their widest cell; control characters
    escaped."""
    cells = [[str(h) for h in headers]] + [
        ["-" if c is None else printable(str(c)) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def card_rows(cards: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for card in cards:
        aliases = card.get("aliases") or []
        rows.append(
            [
                f"{card['repo']}@v{card['version']}",
                method_label(card),
                card.get("rank"),
                card.get("base_model"),
                ",".join(card.get("tasks") or []) or None,
                human_size(card.get("size_bytes")),
                card["commit"][:10],
                ",".join(aliases) or None,
            ]
        )
    return rows


CARD_HEADERS = ["ADAPTER", "METHOD", "RANK", "BASE", "TASKS", "SIZE", "COMMIT", "ALIASES"]


def _with_revision(name: str | None, revision: str | None) -> str | None:
    return f"{name}@{revision}" if name and revision else name


def _metric_text(m: dict[str, Any]) -> str:
    text = f"{m['name']}={m['value']:.4g}"
    if m.get("ci95"):
        text += f" [{m['ci95'][0]:.4g}, {m['ci95'][1]:.4g}]"
    if m.get("dataset"):
        text += f"@{m['dataset']}"
    if m.get("source") not in (None, "push"):
        text += f" ({m['source']})"
    return text


def _overhead_text(overhead: dict[str, Any]) -> str:
    """``none when merged``, else the extra tokens and/or the modules that keep running (an
    AdapterHub bottleneck, which nothing can merge, has layers and no tokens)."""
    if overhead.get("none_when_merged"):
        return "none when merged"
    tokens, layers = overhead.get("extra_tokens", 0), overhead.get("extra_layers", 0)
    text = f"{tokens} extra tokens per sequence"
    if not layers:
        return text
    modules = f"{layers} extra modules per forward pass (not mergeable)"
    return f"{text}, {modules}" if tokens else modules


def print_card(card: dict[str, Any], evals: Sequence[dict[str, Any]] = ()) -> None:
    """``hub show``: the card as aligned ``key: value`` lines, then files and eval records."""
    overhead = card.get("inference_overhead") or {}
    lines: list[tuple[str, Any]] = [
        ("adapter", f"{card['repo']}@v{card['version']}"),
        ("commit", card["commit"]),
        ("aliases", ", ".join(card.get("aliases") or []) or None),
        ("created", card.get("created_at")),
        ("base model", _with_revision(card.get("base_model"), card.get("base_revision"))),
        ("method", method_label(card)),
        ("library", card.get("library") if card.get("library") not in (None, "peft") else None),
        ("rank", card.get("rank")),
        ("alpha", card.get("alpha")),
        ("targets", ", ".join(card.get("target_modules") or []) or None),
        ("placement", ", ".join((card.get("details") or {}).get("placement") or []) or None),
        ("task type", card.get("task_type")),
        ("tasks", ", ".join(card.get("tasks") or []) or None),
        ("tags", ", ".join(f"{k}={v}" for k, v in (card.get("tags") or {}).items()) or None),
        (
            "metrics",
            ", ".join(_metric_text(m) for m in card.get("metrics") or []) or None,
        ),
        *ledger_lines(card),
        ("size", human_size(card.get("size_bytes"))),
        ("dtypes", ", ".join(card.get("dtypes") or []) or None),
        ("overhead", _overhead_text(overhead)),
        ("parent", card.get("parent")),
        ("description", card.get("description")),
    ]
    energy = (card.get("details") or {}).get("retained_energy")
    if energy is not None:
        lines.append(("retained energy", f"{energy:.4%} of the exact merge"))
    lineage = card.get("lineage") or {}
    if lineage.get("recipe"):
        lines.append(("recipe", json.dumps(lineage["recipe"], sort_keys=True)))
        lines.append(("inputs", ", ".join(lineage.get("inputs") or [])))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        if value is not None:
            click.echo(f"{key.ljust(width)}  {printable(str(value))}")
    click.echo("files:")
    for entry in card.get("files") or []:
        click.echo(
            f"  {printable(entry['path'])}  {human_size(entry['size'])}"
            f"  sha256:{entry['sha256'][:16]}"
        )
    from cli.eval_format import extra_lines

    if evals:
        click.echo("evals:")
    for record in evals:
        dataset = record.get("dataset") or {}
        where = dataset.get("name") or "-"
        if dataset.get("sha256"):
            where += f" sha256:{dataset['sha256'][:12]}, {dataset.get('rows')} rows"
        results = ", ".join(
            f"{name}={s['value']:.4g}"
            + (f" [{s['ci95'][0]:.4g}, {s['ci95'][1]:.4g}]" if s.get("ci95") else "")
            + (f" n={s['n']}" if s.get("n") else "")
            for name, s in record.get("metrics", {}).items()
        )
        kept = record.get("remote") or {}
        note = "  (kept locally: the server refused it)" if kept.get("posted") is False else ""
        click.echo(printable(f"  {record['id']}  {record.get('source')}  {where}  {results}{note}"))
        for line in extra_lines(record):
            click.echo(printable(f"    {line}"))
