"""Composites: stacks (adapters applied in order) and ensembles (N prompts, one batch).

A composite is stored as a normal adapter version whose folder holds ``composite.json`` and
one sub-folder per member with the member's files as pushed (the registry stores each blob
once, so this costs no space)::

    composite.json   {"format": "hub-composite", "version": 1, "kind": "stack",
                      "base_model": "...", "members": [{"path": "00-team-sql-lora",
                      "ref": "team/sql-lora@<commit>", "method": "lora", ...}, ...]}
    00-team-sql-lora/adapter_config.json, adapter_model.safetensors, ...
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

from schemas.card import PROMPT_METHODS
from schemas.errors import IncompatibleAdapters, InvalidAdapter

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from schemas.card import InspectedAdapter

COMPOSITE_FILE = "composite.json"
FORMAT = "hub-composite"
Kind = Literal["stack", "ensemble"]
Aggregate = Literal["mean_logprob", "vote"]
ENSEMBLE_METHODS = frozenset({"prompt_tuning", "p_tuning"})


@dataclass
class CompositeMember:
    ref: str
    """Exact reference, ``ns/name@<commit>``."""
    folder: Path
    card: InspectedAdapter


def _check_members(kind: Kind, members: Sequence[CompositeMember]) -> None:
    if kind == "ensemble" and len(members) < 2:
        raise IncompatibleAdapters("an ensemble needs at least two prompt adapters")
    first = members[0]
    for member in members[1:]:
        if member.card.base_model != first.card.base_model:
            raise IncompatibleAdapters(
                f"{member.ref} was trained on base {member.card.base_model!r} but {first.ref} on"
                f" {first.card.base_model!r}; only adapters of one base model compose",
                adapter=member.ref,
            )
    if kind == "stack":
        libraries = {m.card.library for m in members}
        if len(libraries) > 1:
            odd = next(m for m in members if m.card.library != first.card.library)
            raise IncompatibleAdapters(
                f"{odd.ref} is saved by {odd.card.library} but {first.ref} by"
                f" {first.card.library}: a stack runs in one library (PEFT adapters merged in"
                " turn, or AdapterHub adapters as adapters' Stack block)",
                adapter=odd.ref,
            )
        for position, member in enumerate(members):
            parent = member.card.parent
            earlier = {m.ref for m in members[:position]}
            if parent is not None and parent not in earlier:
                raise IncompatibleAdapters(
                    f"{member.ref} was trained on top of {parent}; put {parent} before it in"
                    " the stack",
                    adapter=member.ref,
                )
            if (
                member.card.library == "peft"
                and member.card.method in PROMPT_METHODS
                and position != len(members) - 1
            ):
                raise IncompatibleAdapters(
                    f"{member.ref} is a {member.card.method} adapter: it cannot be merged, so it"
                    " can only be the last adapter of a stack",
                    adapter=member.ref,
                )
        return
    for member in members:
        if member.card.method not in ENSEMBLE_METHODS:
            raise IncompatibleAdapters(
                f"{member.ref} is a {member.card.method} adapter; an ensemble runs prompt tuning"
                " or P-tuning adapters (their prompts batch together)",
                adapter=member.ref,
            )
    shapes = {m.ref: (m.card.rank, m.card.details.get("token_dim")) for m in members}
    if len(set(shapes.values())) > 1:
        raise IncompatibleAdapters(
            "ensemble members need the same number of virtual tokens and width: "
            + ", ".join(f"{ref} {tokens}x{dim}" for ref, (tokens, dim) in shapes.items())
        )


def member_dir_name(position: int, ref: str) -> str:
    return f"{position:02d}-" + ref.split("@")[0].replace("/", "-")


def write_composite(
    dest: Path,
    kind: Kind,
    members: Sequence[CompositeMember],
    aggregate: Aggregate = "mean_logprob",
) -> Path:
    """Write a composite folder at ``dest`` (members' files copied in order)."""
    if not members:
        raise IncompatibleAdapters(f"a {kind} needs at least one adapter")
    _check_members(kind, members)
    dest.mkdir(parents=True)
    entries = []
    for position, member in enumerate(members):
        path = member_dir_name(position, member.ref)
        shutil.copytree(member.folder, dest / path)
        entries.append(
            {
                "path": path,
                "ref": member.ref,
                "method": member.card.method,
                "variant": member.card.variant,
                "library": member.card.library,
                "parent": member.card.parent,
            }
        )
    spec: dict[str, Any] = {
        "format": FORMAT,
        "version": 1,
        "kind": kind,
        "base_model": members[0].card.base_model,
        "members": entries,
    }
    if kind == "ensemble":
        spec["aggregate"] = aggregate
    (dest / COMPOSITE_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return dest


def read_composite(folder: Path) -> dict[str, Any]:
    """Parse and check ``composite.json``; one-line ``InvalidAdapter`` naming the field."""
    try:
        spec = json.loads((folder / COMPOSITE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidAdapter(f"{COMPOSITE_FILE}: unreadable ({error})") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise InvalidAdapter(f"{COMPOSITE_FILE}: field 'format' must be {FORMAT!r}", field="format")
    if spec.get("kind") not in ("stack", "ensemble"):
        raise InvalidAdapter(
            f"{COMPOSITE_FILE}: field 'kind' must be 'stack' or 'ensemble'", field="kind"
        )
    members = spec.get("members")
    if not isinstance(members, list) or not members:
        raise InvalidAdapter(
            f"{COMPOSITE_FILE}: field 'members' must list the members", field="members"
        )
    for member in members:
        path = member.get("path") if isinstance(member, dict) else None
        if (
            not isinstance(path, str)
            or "/" in path
            or path.startswith(".")
            or not (folder / path).is_dir()
        ):
            raise InvalidAdapter(
                f"{COMPOSITE_FILE}: member path {path!r} is not a sub-folder", field="members"
            )
    return spec


# -- loading ------------------------------------------------------------------------------


def load_composed(base_model: Any, folder: str | Path) -> Any:
    """A ready model for ``folder``: a plain adapter (PeftModel), a stack (members applied in
    order, mergeable ones merged), or an ``EnsembleModel``. AdapterHub saves (one, or a stack
    of them) run through ``adapters`` itself, a stack as its ``Stack`` block.

    Example:
        >>> model = load_composed(AutoModelForCausalLM.from_pretrained(base), "pulled/stack")
        ...                                                           # doctest: +SKIP
    """
    from peft import PeftModel

    from compose.adapterhub import LIBRARY, is_adapterhub_folder

    folder = Path(folder)
    if not (folder / COMPOSITE_FILE).is_file():
        if is_adapterhub_folder(folder):
            from compose.adapterhub import load_adapterhub

            return load_adapterhub(base_model, [folder], stack=False)
        return PeftModel.from_pretrained(base_model, str(folder)).eval()
    spec = read_composite(folder)
    if spec["kind"] == "ensemble":
        return EnsembleModel(base_model, folder)
    if all(member.get("library") == LIBRARY for member in spec["members"]):
        from compose.adapterhub import load_adapterhub

        paths = [folder / member["path"] for member in spec["members"]]
        return load_adapterhub(base_model, paths, stack=True)
    model = base_model
    for member in spec["members"]:
        model = PeftModel.from_pretrained(model, str(folder / member["path"]))
        if member["method"] not in PROMPT_METHODS:
            model = model.merge_and_unload()
    return model.eval()


class EnsembleModel:
    """N prompt adapters on one base, run as one batch; log-probabilities averaged (or voted).

    Example:
        >>> ensemble = EnsembleModel(base, "pulled/prompt-ensemble")          # doctest: +SKIP
        >>> ensemble.classify(prompt_ids, [[tok_yes], [tok_no]])
        [0]
    """

    def __init__(self, base_model: Any, folder: str | Path) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        spec = read_composite(folder)
        if spec["kind"] != "ensemble":
            raise InvalidAdapter(f"{folder}: a {spec['kind']} composite, not an ensemble")
        self.model = base_model.eval()
        self.aggregate: Aggregate = spec.get("aggregate", "mean_logprob")
        embedding = self.model.get_input_embeddings().weight
        self.prompts = [
            load_file(str(folder / m["path"] / "adapter_model.safetensors"))[
                "prompt_embeddings"
            ].to(embedding.dtype)
            for m in spec["members"]
        ]
        self.tokens = self.prompts[0].shape[0]

    def member_logprobs(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Log-probabilities per member, ``(members, batch, seq, vocab)``, in ONE forward pass."""
        import torch

        batch, length = input_ids.shape
        members = len(self.prompts)
        embeds = self.model.get_input_embeddings()(input_ids)
        prompts = torch.stack(self.prompts)[:, None].expand(members, batch, *self.prompts[0].shape)
        inputs = torch.cat([prompts, embeds[None].expand(members, *embeds.shape)], dim=2)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        full_mask = torch.cat([mask.new_ones(batch, self.tokens), mask], dim=1)
        with torch.no_grad():
            logits = self.model(
                inputs_embeds=inputs.reshape(members * batch, self.tokens + length, -1),
                attention_mask=full_mask.repeat(members, 1),
            ).logits
        logits = logits[:, self.tokens :].float().reshape(members, batch, length, -1)
        return torch.log_softmax(logits, dim=-1)

    def logprobs(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The ensemble's next-token log-probabilities ``(batch, seq, vocab)``: the members'
        mean (``mean_logprob``), or the log of the vote shares (``vote``)."""
        import torch

        per_member = self.member_logprobs(input_ids, attention_mask)
        if self.aggregate == "mean_logprob":
            return per_member.mean(dim=0)
        votes = torch.nn.functional.one_hot(per_member.argmax(-1), per_member.shape[-1])
        return votes.float().mean(dim=0).log()

    def score(self, prompt_ids: Tensor, continuation: Sequence[int]) -> float:
        """Sum of the ensemble's log-probabilities of ``continuation`` after ``prompt_ids``
        (one sequence, shape ``(1, T)``)."""
        import torch

        ids = torch.cat([prompt_ids, torch.tensor([list(continuation)])], dim=1)
        logprobs = self.logprobs(ids)[0]
        start = prompt_ids.shape[1]
        return float(sum(logprobs[start - 1 + i, tok] for i, tok in enumerate(continuation)))

    def classify(self, prompt_ids: Tensor, choices: Sequence[Sequence[int]]) -> int:
        """Index of the most likely continuation among ``choices``."""
        scores = [self.score(prompt_ids, choice) for choice in choices]
        return max(range(len(scores)), key=scores.__getitem__)

    def generate(self, input_ids: Tensor, max_new_tokens: int = 20) -> Tensor:
        """Greedy decoding from the ensemble's distribution; returns prompt + new tokens."""
        import torch

        ids = input_ids
        for _ in range(max_new_tokens):
            next_token = self.logprobs(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_token], dim=1)
        return ids


class EnsembleLM:
    """An ``EnsembleModel`` with the interface of a causal LM, so evaluation and cost
    measurement run it like any model: ``model(input_ids=, attention_mask=).logits`` and a
    greedy ``generate``.

    The logits are the ensemble's log-probabilities renormalised over the vocabulary
    (``log_softmax`` of the members' mean log-probabilities: the normalised product of
    experts; for ``vote``, the vote shares). Every member runs in the same forward pass.
    ``generate`` recomputes the whole sequence each step (no KV cache: the members' prompts
    make the cache N times larger than the base's).
    """

    def __init__(self, ensemble: EnsembleModel) -> None:
        self.ensemble = ensemble
        self.config = ensemble.model.config

    def eval(self) -> EnsembleLM:
        return self

    def parameters(self) -> Iterator[Tensor]:
        yield from self.ensemble.model.parameters()
        yield from self.ensemble.prompts

    def buffers(self) -> Iterator[Tensor]:
        yield from self.ensemble.model.buffers()

    def __call__(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **_: Any
    ) -> SimpleNamespace:
        import torch

        logprobs = self.ensemble.logprobs(input_ids, attention_mask)
        return SimpleNamespace(logits=torch.log_softmax(logprobs, dim=-1))

    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        max_new_tokens: int = 20,
        min_new_tokens: int = 0,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        logits_processor: Sequence[Any] = (),
        **_: Any,
    ) -> Tensor:
        """Greedy decoding from the ensemble's distribution, left-padded batches allowed;
        returns prompt + new tokens (pad after a sequence's EOS), as ``transformers`` does."""
        import torch

        ids = input_ids
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for step in range(max_new_tokens):
            scores = self(ids, mask).logits[:, -1]
            for processor in logits_processor:
                scores = processor(ids, scores)
            if eos_token_id is not None and step < min_new_tokens:
                scores[:, eos_token_id] = -float("inf")
            next_token = scores.argmax(-1)
            if pad_token_id is not None:
                next_token = torch.where(done, torch.full_like(next_token, pad_token_id),
                                         next_token)  # fmt: skip
            ids = torch.cat([ids, next_token[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            if eos_token_id is not None:
                done |= next_token == eos_token_id
                if bool(done.all()):
                    break
        return ids


def language_model(loaded: Any) -> Any:
    """What ``load_composed`` returned, as a causal LM (an ensemble gets ``EnsembleLM``)."""
    return EnsembleLM(loaded) if isinstance(loaded, EnsembleModel) else loaded


def average_prompts(
    members: Sequence[CompositeMember], dest: Path, dtype: torch.dtype | None = None
) -> Path:
    """One prompt adapter whose prompt is the mean of the members' (loads in PEFT as is)."""
    import torch
    from safetensors.torch import load_file, save_file

    _check_members("ensemble", members)
    prompts = [
        load_file(str(m.folder / "adapter_model.safetensors"))["prompt_embeddings"] for m in members
    ]
    mean = torch.stack([p.double() for p in prompts]).mean(dim=0).to(dtype or prompts[0].dtype)
    dest.mkdir(parents=True)
    config = json.loads((members[0].folder / "adapter_config.json").read_text())
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(
        {"prompt_embeddings": mean.contiguous()},
        str(dest / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    (dest / "README.md").write_text(
        "---\ndescription: average of " + ", ".join(m.ref for m in members) + "\n---\n"
    )
    return dest
