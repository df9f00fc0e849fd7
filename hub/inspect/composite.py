"""Cards for composite folders (stacks, ensembles): the members inspected one by one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compose.composites import read_composite
from hub.inspect.ledger import composite_ledger
from schemas.card import InferenceOverhead, InspectedAdapter

if TYPE_CHECKING:
    from collections.abc import Callable


def inspect_composite(
    folder: Path, inspect: Callable[..., InspectedAdapter], **options: Any
) -> InspectedAdapter:
    """The card of a composite: ``inspect(member, **options)`` for each member, combined."""
    spec = read_composite(folder)
    members = [inspect(folder / m["path"], **options) for m in spec["members"]]
    ensemble = spec["kind"] == "ensemble"
    mergeable = all(m.inference_overhead.none_when_merged for m in members)
    return InspectedAdapter(
        base_model=spec.get("base_model"),
        base_revision=members[0].base_revision,
        method="composite",
        variant=spec["kind"],
        rank=None,
        target_modules=sorted({t for m in members for t in m.target_modules}),
        task_type=members[0].task_type,
        **composite_ledger(
            spec["kind"],
            [(m.model_dump(), m._ledger_parts) for m in members],
            members[0].params_base,
        ),
        size_bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        dtypes=sorted({d for m in members for d in m.dtypes}),
        inference_overhead=InferenceOverhead(
            none_when_merged=mergeable and not ensemble,
            extra_tokens=sum(m.inference_overhead.extra_tokens for m in members),
            extra_layers=sum(m.inference_overhead.extra_layers for m in members),
        ),
        details={
            "kind": spec["kind"],
            "members": [m["ref"] for m in spec["members"]],
            "member_methods": [m.method for m in members],
            **({"aggregate": spec.get("aggregate")} if ensemble else {}),
        },
        description=f"{spec['kind']} of " + ", ".join(m["ref"] for m in spec["members"]),
    )
