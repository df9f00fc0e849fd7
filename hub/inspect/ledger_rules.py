"""How the parameter ledger counts, per method: the README's ledger table, rendered from here.

``hub.inspect.ledger`` computes the counts; ``tests/hub/test_ledger.py`` checks them per method
against hand-computed numbers and PEFT's ``get_nb_trainable_parameters()``, and checks that
the README's table is ``ledger_table()`` and that every method it tests has a row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """One line of the table: how each ledger count is made for ``label``."""

    label: str
    methods: tuple[str, ...]
    """The test factory names (``tests.factories.METHODS``) and card methods it covers."""
    trained: str
    stored: str
    changed: str
    extra: str


_LORA_CHANGED = "out x in of each adapted weight (+ out for a `lora_B` bias)"
_FACTORS = "the factors"
_BASE = "out x in of each adapted weight; needs the base's shapes (else unknown)"

RULES: tuple[Rule, ...] = (
    Rule("LoRA", ("lora",), "A + B", "A + B", _LORA_CHANGED, _FACTORS),
    Rule("rsLoRA", ("rslora",), "A + B", "A + B", _LORA_CHANGED, _FACTORS),
    Rule("DoRA", ("dora",), "A + B + magnitude", "A + B + magnitude", _LORA_CHANGED,
         "A + B + magnitude"),
    Rule("LoRA + modules_to_save", ("rslora",), "+ the saved modules", "+ the saved modules",
         "+ every value of the saved modules (they replace the base's)",
         "+ the saved modules (held beside the base's)"),
    Rule("LoRA + trained biases (`bias=all`)", ("bias",), "+ the biases", "+ the biases",
         "+ the biases", "+ 0 (they overwrite the base's biases when loaded)"),
    Rule("LoRA-FA (tag `optimizer=lorafa`)", ("lorafa",), "B only (A stays at its init)", "A + B",
         _LORA_CHANGED, _FACTORS),
    Rule("MiCA", ("mica",), "A (B is frozen)", "A; B in `params_stored_frozen`", _LORA_CHANGED,
         "A + B"),
    Rule("aLoRA", ("alora",), "A + B", "A + B", "unknown: it never merges", _FACTORS),
    Rule("AdaLoRA", ("adalora",), "init_r x (in + out + 1) per module (what pruning started"
         " from)", "A + B + E as saved (the rank_pattern's triplets)", _LORA_CHANGED,
         "A + B + E"),
    Rule("LoHa", ("loha",), "the four factors", "the factors", "out x in (from w1_a, w1_b)",
         _FACTORS),
    Rule("LoKr", ("lokr",), "the factors", "the factors", "(w1 rows x w2 rows) x (w1 cols x"
         " w2 cols)", _FACTORS),
    Rule("OFT", ("oft",), "oft_R (b(b-1)/2 per block)", "oft_R", _BASE, "oft_R"),
    Rule("BOFT", ("boft",), "boft_R + boft_s", "boft_R + boft_s", "out (boft_s) x blocks x"
         " block size", "boft_R + boft_s"),
    Rule("IA3", ("ia3",), "the vectors", "the vectors", _BASE + ": the scaled weights whole",
         "the vectors"),
    Rule("VeRA", ("vera",), "lambda_b + lambda_d", "lambdas; vera_A / vera_B in"
         " `params_stored_frozen`", _BASE, "lambdas + vera_A + vera_B once (regenerated ones:"
         " r x (widest in + widest out), needs the base's shapes)"),
    Rule("prompt tuning", ("prompt_tuning",), "the virtual tokens' table", "the table", "0",
         "the table"),
    Rule("prefix tuning", ("prefix_tuning",), "the key/value table; with prefix_projection"
         " its embedding + two-layer MLP", "the table", "0", "the table"),
    Rule("P-tuning", ("p_tuning",), "the prompt encoder: its embedding + MLP (or LSTM + MLP)"
         " head", "the table it computed", "0", "the table"),
    Rule("generic types", ("generic",), "stored minus the tensors PEFT keeps frozen (the"
         " card's note says where PEFT differs)", "all but the frozen tensors",
         "unknown (PEFT merges them; which values it rewrites is not read)",
         "every stored tensor, frozen ones included"),
    Rule("X-LoRA", ("xlora",), "its classifier (from xlora_depth, xlora_size, hidden_size and"
         " its adapters; not saved)", "the LoRAs it mixes (its subfolders)",
         "unknown: it never merges", "the LoRAs it mixes"),
    Rule("generic prompt types", ("generic-prompt", "cartridge"), "the tables (Cartridges: minus"
         " its num_frozen_tokens rows)", "the tables",
         "0", "the tables"),
    Rule("stack", ("stack",), "sum of its members", "sum", "the union of its members'"
         " rewritten weights, each once", "sum"),
    Rule("ensemble", ("ensemble",), "sum of its members", "sum", "unknown: never merged",
         "sum (every prompt runs)"),
    Rule("merge result (linear, svd, cat, ties, dare...)", ("merge",), "sum of its inputs'"
         " params_trained", "its own file", "its own file", "its own file"),
)  # fmt: skip

HEADER = "| method | params_trained | params_stored | params_changed_when_merged | params_extra_at_inference |"  # noqa: E501


def ledger_table() -> str:
    """The README's ledger table, one line per ``RULES`` entry.

    Example:
        >>> ledger_table().splitlines()[2].startswith("| LoRA |")
        True
    """
    lines = [HEADER, "|" + "---|" * 5]
    for rule in RULES:
        cells = [rule.label, rule.trained, rule.stored, rule.changed, rule.extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
