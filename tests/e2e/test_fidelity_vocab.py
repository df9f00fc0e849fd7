"""Adapters trained on a resized vocabulary (new tokens): PEFT saves the resized embedding
layers beside the adapter; the card says the vocabulary size and the merged export takes the
adapter's shapes and ``vocab_size``. Not a ``CASES`` row: PEFT itself only loads these onto a
base resized first (``resize_token_embeddings``), so the reference is built that way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.e2e.fidelity import EXPORT_TOL, IDS, Bases, error_line, load_base, perturb

NEW_VOCAB = 140  # the tiny bases have 128 tokens


@pytest.fixture(scope="session")
def bases(tmp_path_factory) -> Bases:
    return Bases(tmp_path_factory.mktemp("fidelity-vocab-bases"))


def _resized(base: Path) -> Any:
    model = load_base(base)
    model.resize_token_embeddings(NEW_VOCAB)
    return model


def _build(base: Path, targets: list[str], out: Path) -> tuple[Path, int]:
    import peft

    torch.manual_seed(1)
    model = _resized(base)
    model.name_or_path = model.config._name_or_path = str(base)
    peft_model = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets)
    )
    perturb(peft_model, torch.Generator().manual_seed(1))
    with torch.no_grad():  # the new tokens' rows, as training on them would leave them
        embeddings = peft_model.get_input_embeddings()
        weight = getattr(embeddings, "base_layer", embeddings).weight
        weight[128:] += 0.5 * torch.randn(weight[128:].shape, generator=torch.Generator())
    peft_model.save_pretrained(out)
    (out / "tokenizer_config.json").write_text('{"added": "the new tokens"}')  # a stand-in
    return out, peft_model.get_nb_trainable_parameters()[0]


def _peft_logits(base: Path, folder: Path) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(_resized(base), str(folder)).eval()
    with torch.no_grad():
        return model(torch.tensor([[*IDS[0], 130, 139]])).logits[0].float()


def _hf_logits(folder: Path) -> torch.Tensor:
    with torch.no_grad():
        return load_base(folder)(torch.tensor([[*IDS[0], 130, 139]])).logits[0].float()


@pytest.mark.parametrize(
    ("family", "targets"),
    [
        ("llama", ["q_proj", "embed_tokens", "lm_head"]),
        ("llama-tied", ["q_proj", "embed_tokens"]),
        ("llama", ["q_proj", "v_proj"]),  # not targeted: PEFT saves the layers whole
    ],
)
def test_resized_vocabulary(family, targets, registry, bases, tmp_path):
    base = bases(family)
    folder, trainable = _build(base, targets, tmp_path / "adapter")
    expected = _peft_logits(base, folder)

    card = registry.push(folder, name="vocab/new-tokens").card
    assert card.details["vocab_size"] == NEW_VOCAB
    assert card.params_trainable == trainable
    assert card.target_modules == sorted(t for t in targets)

    result = registry.export(
        card.ref, base=base, output=tmp_path / "out", dtype="fp32", progress=False
    )
    assert json.loads((result.path / "config.json").read_text())["vocab_size"] == NEW_VOCAB
    # The tokenizer that knows the new tokens is the adapter's.
    tokenizer = (result.path / "tokenizer_config.json").read_bytes()
    assert tokenizer == (folder / "tokenizer_config.json").read_bytes()
    torch.testing.assert_close(_hf_logits(result.path), expected, rtol=0, atol=EXPORT_TOL)

    with pytest.raises(Exception) as refused:
        registry.export(card.ref, base=base, output=tmp_path / "gguf", format="gguf")
    line = error_line(refused.value)
    assert line.startswith(f"Error: adapter {card.ref}"), line
    assert line.endswith(
        " was trained on a resized vocabulary"
        f" (model.embed_tokens.weight has {NEW_VOCAB} rows, the base's 128); --format gguf"
        " cannot change the vocabulary: export --format safetensors"
    ), line
    assert not (tmp_path / "gguf").exists()
