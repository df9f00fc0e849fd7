"""The fidelity harness: every adapter PEFT writes gets a right card and a right export, or one
clear refusal.

A ``Case`` names a tiny base family, a PEFT config factory and what must happen:

- ``push``: ``Card(...)`` (the fields the card must have; parameter counts are always checked
  against PEFT's own ``get_nb_trainable_parameters()``), or ``Refused("...")`` (a stable
  substring of the one-line ``Error: ...`` the CLI prints).
- ``export``: per format, ``MERGED`` (the export loaded by its consumer gives the fp32
  ``PeftModel``'s logits within ``EXPORT_TOL``), or ``Refused("...")`` (and no output folder).

``run_case`` does the whole round trip through the Registry API: build the adapter with
``get_peft_model(...).save_pretrained``, push, check the card against PEFT, pull and load with
``PeftModel.from_pretrained``, export. Bases are built once per session (``Bases``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from schemas.methods import PROMPT_METHODS
from tests.compose.deploy.models import make_base

PULL_TOL = 1e-6
"""PeftModel on the pulled folder vs on the original folder (same bytes, same computation)."""
EXPORT_TOL = 1e-4
"""Merged fp32 export loaded by transformers vs the unmerged fp32 PeftModel."""
MIN_EFFECT = 1e-3
"""The adapter must move the logits by more than this, or the export check checks nothing."""
IDS = [[1, 5, 9, 42, 7, 3, 11, 60]]

# -- bases -------------------------------------------------------------------------------
TINY = dict(hidden=32, layers=2, heads=4, kv_heads=2, vocab=128)
FAMILIES: dict[str, Callable[[Path], Path]] = {
    "llama": lambda p: make_base(p, "llama", seed=10, **TINY),
    "llama-tied": lambda p: make_base(p, "llama", tied=True, seed=11, **TINY),
    "qwen2": lambda p: make_base(p, "qwen2", seed=12, **TINY),  # q/k/v biases
    "mixtral": lambda p: make_base(
        p, "mixtral", seed=13, num_local_experts=4, num_experts_per_tok=2, **TINY
    ),
}
"""Base family -> builder of a tiny random model folder (safetensors, no tokenizer)."""


class Bases:
    """Each family's base folder and its fp32 logits on ``IDS``, built once per session."""

    def __init__(
        self, root: Path, families: Mapping[str, Callable[[Path], Path]] | None = None
    ) -> None:
        self.root = root
        self.families = FAMILIES if families is None else families
        self.folders: dict[str, Path] = {}
        self.logits: dict[str, torch.Tensor] = {}

    def __call__(self, family: str) -> Path:
        if family not in self.folders:
            self.folders[family] = self.families[family](self.root / family)
            self.logits[family] = hf_logits(self.folders[family])
        return self.folders[family]


# -- expectations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Card:
    """``push`` must succeed with a card holding these fields."""

    method: str
    variant: str | None = None
    rank: int | None = None
    targets: tuple[str, ...] | None = None
    """Sorted last name components; None: exactly the modules PEFT adapted or saves whole."""
    params_note: str | None = None
    """None: ``params_trainable`` equals PEFT's trainable count. Else the card's
    ``details["params_note"]`` must contain this text, saying why the two differ."""
    none_when_merged: bool | None = None
    """None: True for weight methods, False for prompt methods."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Card ``details`` entries that must have exactly these values."""


@dataclass(frozen=True)
class Refused:
    """The step must fail with one ``Error: ...`` line containing ``error``."""

    error: str


@dataclass(frozen=True)
class Merged:
    """The export must load in its consumer and match the fp32 PeftModel within EXPORT_TOL."""


MERGED = Merged()
Expect = Card | Refused | Merged


def perturb(model: Any, generator: torch.Generator) -> None:
    """A stand-in for training: seeded noise on every trainable parameter.

    Multiplicative for scales that mean something at init (DoRA magnitudes, IA3 vectors), so
    they stay sane; additive elsewhere (fresh LoRA B matrices are zero, so an untouched
    adapter would not change the outputs).
    """
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                noise = 0.05 * torch.randn(param.shape, generator=generator)
                if "magnitude" in name or "ia3_l" in name:
                    param.mul_(1 + noise)
                else:
                    param.add_(noise)


@dataclass(frozen=True)
class Case:
    """One row of the fidelity table."""

    id: str
    base: str
    """A key of ``FAMILIES``."""
    config: Callable[[], Any]
    """A PEFT config factory (``task_type="CAUSAL_LM"``)."""
    push: Card | Refused
    export: Mapping[str, Merged | Refused] = field(default_factory=lambda: {"safetensors": MERGED})
    """Format -> expectation. ``safetensors`` is exported with ``--dtype fp32``."""
    prepare: Callable[[Any, torch.Generator], None] = perturb
    """Called on the PeftModel before saving (default: ``perturb``)."""
    adapter_name: str = "default"
    save: Mapping[str, Any] = field(default_factory=dict)
    """Extra ``save_pretrained`` keyword arguments."""
    edit_config: Mapping[str, Any] = field(default_factory=dict)
    """Keys written into the saved adapter_config.json (e.g. a newer PEFT's fields)."""
    seed: int = 1
    needs: str | None = None
    """A module the case needs that the project does not depend on: skipped without it."""


# -- building and loading ----------------------------------------------------------------
def load_base(folder: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def build_adapter(case: Case, base: Path, out: Path) -> tuple[Path, int]:
    """Save the case's adapter with PEFT; return its folder and PEFT's trainable count."""
    from peft import get_peft_model

    torch.manual_seed(case.seed)  # PEFT's own init (kaiming A, random prompts) draws from it
    model = load_base(base)
    model.name_or_path = model.config._name_or_path = str(base)
    peft_model = get_peft_model(model, case.config(), adapter_name=case.adapter_name)
    case.prepare(peft_model, torch.Generator().manual_seed(case.seed))
    trainable, _ = peft_model.get_nb_trainable_parameters()
    peft_model.save_pretrained(out, **case.save)
    folder = out if case.adapter_name == "default" else out / case.adapter_name
    if case.edit_config:
        path = folder / "adapter_config.json"
        config = json.loads(path.read_text())
        path.write_text(json.dumps({**config, **case.edit_config}, indent=2))
    return folder, trainable


def load_peft(base: Path, folder: Path, *, trainable: bool = False) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base), str(folder), is_trainable=trainable).eval()


def peft_logits(base: Path, folder: Path) -> torch.Tensor:
    model = load_peft(base, folder)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits[0].float()


def hf_logits(folder: Path) -> torch.Tensor:
    model = load_base(folder)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits[0].float()


def peft_targets(model: Any) -> list[str]:
    """Last name components of the modules PEFT adapted, or saves whole (modules_to_save)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import ModulesToSaveWrapper

    names = set()
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer | ModulesToSaveWrapper):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def error_line(error: BaseException) -> str:
    """What the CLI prints for ``error``."""
    from cli.errors import format_error

    return format_error(error)


# -- the round trip ----------------------------------------------------------------------


def run_case(case: Case, registry: Any, bases: Bases, tmp: Path) -> None:
    """Build, push, check the card against PEFT, pull + load, export: as ``case`` expects."""
    base = bases(case.base)
    folder, built_trainable = build_adapter(case, base, tmp / "adapter")
    expected = peft_logits(base, folder)
    name = f"fidelity/{case.id}"

    try:
        card = registry.push(folder, name=name).card
    except Exception as error:  # any failure is compared with the expectation
        if not isinstance(case.push, Refused):
            raise
        _check_refusal(error, case.push)
        assert registry.search() == []  # nothing half-registered
        ref = str(folder)
    else:
        assert not isinstance(case.push, Refused), f"push was expected to fail: {card!r}"
        _check_card(case, case.push, card, base, folder, built_trainable)
        pulled = registry.pull(card.ref, tmp / "pulled")
        for entry in card.files:
            assert (pulled / entry.path).read_bytes() == (folder / entry.path).read_bytes()
        torch.testing.assert_close(peft_logits(base, pulled), expected, rtol=0, atol=PULL_TOL)
        ref = card.ref

    for fmt, expectation in case.export.items():
        out = tmp / f"export-{fmt}"
        options: dict[str, Any] = {"dtype": "fp32"} if fmt == "safetensors" else {}
        try:
            result = registry.export(
                ref, base=base, output=out, format=fmt, progress=False, **options
            )
        except Exception as error:
            if not isinstance(expectation, Refused):
                raise
            _check_refusal(error, expectation)
            assert not out.exists()
            assert not [p for p in tmp.iterdir() if p.name.startswith(f".{out.name}")]
            continue
        assert isinstance(expectation, Merged), f"export {fmt} was expected to fail: {result!r}"
        _check_export(fmt, out, base, expected, bases.logits[case.base])


def _check_refusal(error: BaseException, expectation: Refused) -> None:
    from schemas.errors import HubError

    line = error_line(error)
    assert isinstance(error, HubError), f"untyped error: {line}"
    assert "\n" not in line
    assert expectation.error in line, line


def _check_card(
    case: Case, want: Card, card: Any, base: Path, folder: Path, built_trainable: int
) -> None:
    prompt = want.method in PROMPT_METHODS
    assert (card.method, card.variant, card.rank) == (want.method, want.variant, want.rank)
    assert card.base_model == str(base)
    assert card.task_type == "CAUSAL_LM"
    # PEFT's view after loading the folder (prompt methods: as built, since PEFT refuses to
    # load them trainable and adapts no modules).
    model = None if prompt else load_peft(base, folder, trainable=True)
    if want.targets is not None:
        targets = list(want.targets)
    else:
        targets = [] if model is None else peft_targets(model)
    assert card.target_modules == targets
    peft_count = built_trainable if model is None else model.get_nb_trainable_parameters()[0]
    if want.params_note is None:
        assert card.params_trainable == peft_count, (card.params_trainable, peft_count)
    else:
        assert card.params_trainable != peft_count
        assert want.params_note in card.details.get("params_note", ""), card.details
    none_when_merged = not prompt if want.none_when_merged is None else want.none_when_merged
    assert card.inference_overhead.none_when_merged is none_when_merged
    if prompt:
        assert card.inference_overhead.extra_tokens == card.rank
    for key, value in want.details.items():
        assert card.details.get(key) == value, (key, card.details.get(key))


def _check_export(
    fmt: str, out: Path, base: Path, expected: torch.Tensor, base_logits: torch.Tensor
) -> None:
    effect = (expected - base_logits).abs().max().item()
    assert effect > MIN_EFFECT, f"the adapter barely changes the logits ({effect:.2e})"
    if fmt == "safetensors":
        got = hf_logits(out)
    elif fmt == "vllm-bundle":
        (adapter,) = sorted((out / "adapters").iterdir())
        got = peft_logits(base, adapter)
    else:
        raise AssertionError(f"no numeric check for {fmt} exports: expect a refusal or add one")
    torch.testing.assert_close(got, expected, rtol=0, atol=EXPORT_TOL)
