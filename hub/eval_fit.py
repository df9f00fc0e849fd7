"""Whether an adapter fits the base it is evaluated on, said with the module and both shapes.

``check_fit`` runs for every adapter of an eval before anything is scored. For the methods the
export merges (``compose.deploy``), the adapter's tensors are shape-checked against the base's
safetensors headers (no base weight is loaded), the same check ``hub export`` makes; a prompt
method's virtual tokens must have the base's hidden size. Other methods (OFT, BOFT,
composites, AdapterHub saves) are loaded by their runtime, and a misfit then surfaces as
PyTorch's ``size mismatch for ...`` report, which ``misfit`` turns into one line naming the
tensor and both shapes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.errors import IncompatibleAdapters, InvalidAdapter, InvalidArgument
from schemas.methods import PROMPT_METHODS

if TYPE_CHECKING:
    from schemas.card import AdapterCard

_SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<tensor>\S+): copying a param with shape"
    r" torch\.Size\(\[(?P<got>[^\]]*)\]\) from checkpoint, the shape in current model is"
    r" torch\.Size\(\[(?P<expected>[^\]]*)\]\)"
)


def check_fit(card: AdapterCard, folder: Path, base_dir: Path, base_label: str) -> None:
    """Refuse an adapter whose tensors contradict the base's shapes, or that adapts a module
    the base does not have.

    Raises:
        IncompatibleAdapters: ``REF does not fit the base BASE: module M changes a [..]
            weight, but the base's is [..]`` (with ``module``, ``expected``, ``got``).
    """
    from compose.deploy.adapters import MERGEABLE, load_adapter
    from compose.deploy.base import BaseFolder

    if card.method == "composite" or card.library == "adapters":
        return
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        method = str(config.get("peft_type", "")).lower()
    except (OSError, ValueError, AttributeError):
        return  # the runtime's load says what is wrong with the folder
    if method in PROMPT_METHODS:
        _check_prompt(card, method, config, base_dir, base_label)
        return
    if method not in MERGEABLE:
        return
    try:
        base = BaseFolder.open(base_dir)
        load_adapter(folder, base, card.ref)
    except IncompatibleAdapters as error:
        module = getattr(error, "module", None)
        if module is None:
            return  # a reason not to merge (aLoRA, layer replication...), not a misfit
        expected, got = getattr(error, "expected", None), getattr(error, "got", None)
        detail = (
            f"module {module} changes a {got} weight, but the base's is {expected}"
            if expected is not None and got is not None
            else f"module {module} is not in the base"
        )
        raise IncompatibleAdapters(
            f"{card.ref} does not fit the base {base_label}: {detail}",
            adapter=card.ref,
            module=module,
            expected=expected,
            got=got,
        ) from None
    except (InvalidAdapter, InvalidArgument, OSError):
        return  # a base without safetensors headers, a malformed file: the runtime decides


def _check_prompt(
    card: AdapterCard, method: str, config: dict[str, Any], base_dir: Path, base_label: str
) -> None:
    """Virtual tokens are vectors of the base's hidden size (PEFT builds the table from the
    saved ``token_dim`` and would only fail at the first forward); prefix tuning's cache
    has one entry per layer."""
    try:
        text = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
        text = dict(text.get("text_config") or text)
    except (OSError, ValueError, AttributeError):
        return
    for field, base_field, what in (
        ("token_dim", "hidden_size", "virtual tokens of {} dimensions, but the base's hidden"
         " size is {}"),
        ("num_layers", "num_hidden_layers", "a prefix for {} layers, but the base has {}"),
    ):  # fmt: skip
        want, have = config.get(field), text.get(base_field)
        if method != "prefix_tuning" and field == "num_layers":
            continue  # only prefix tuning's virtual tokens are per layer
        if isinstance(want, int) and isinstance(have, int) and want != have:
            raise IncompatibleAdapters(
                f"{card.ref} does not fit the base {base_label}: it has " + what.format(want, have),
                adapter=card.ref,
                expected=have,
                got=want,
            )


def _tensor_name(key: str) -> str:
    """A PEFT state-dict key without its wrapper prefix and adapter name."""
    return key.removeprefix("base_model.model.").replace(".default.", ".")


def misfit(card: AdapterCard, base_label: str, error: BaseException) -> IncompatibleAdapters:
    """The one-line error for a load that failed on ``base_label``: the first mismatched
    tensor and both shapes where PyTorch reported them, else its message's first line."""
    text = str(error).strip()
    found = _SIZE_MISMATCH.search(text)
    if found is not None:
        got, expected = f"[{found['got']}]", f"[{found['expected']}]"
        return IncompatibleAdapters(
            f"{card.ref} does not fit the base {base_label}: tensor"
            f" {_tensor_name(found['tensor'])} is {got} in the adapter, but the base needs"
            f" {expected}",
            adapter=card.ref,
            module=_tensor_name(found["tensor"]),
            expected=expected,
            got=got,
        )
    first = text.splitlines()[0] if text else type(error).__name__
    return IncompatibleAdapters(
        f"{card.ref} does not fit the base {base_label}: {first}", adapter=card.ref
    )
