"""What changed between two versions of an adapter: card fields, config keys, files, tensors.

Tensors are matched by name within each ``.safetensors`` file the two versions share: added,
removed, a new dtype or shape, or the same dtype and shape with other bytes. Files with the
same sha256 are the same bytes, so only files that differ are read (their tensors compared
range by range, never loaded as tensors).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hub.inspect.safetensors_header import read_safetensors_header

if TYPE_CHECKING:
    from hub.registry import Registry
    from schemas.card import AdapterCard

CARD_FIELDS = (
    "base_model",
    "method",
    "variant",
    "rank",
    "alpha",
    "target_modules",
    "task_type",
    "params_trainable",
    "size_bytes",
    "dtypes",
    "tasks",
    "tags",
    "description",
)
MAX_COMPARED_BYTES = 1 << 30
"""Tensor bytes read at most per file to tell which tensors changed (beyond it: file level)."""


def diff_versions(registry: Registry, a: AdapterCard, b: AdapterCard) -> dict[str, Any]:
    """The differences from version ``a`` to version ``b`` (``b`` is the newer one shown).

    Returns:
        ``{"fields": [(name, a, b)], "config": {"added", "removed", "changed"}, "files":
        {"added", "removed", "changed"}, "tensors": {path: {"added", "removed", "changed"}}}``
        where config entries are ``(key, value_a, value_b)`` with JSON values and tensor
        changes are ``(name, what)``.
    """
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    fields = [(f, da.get(f), db.get(f)) for f in CARD_FIELDS if da.get(f) != db.get(f)]
    files_a = {f.path: f for f in a.files}
    files_b = {f.path: f for f in b.files}
    changed = sorted(p for p in files_a.keys() & files_b.keys() if files_a[p] != files_b[p])
    both = files_a.keys() & files_b.keys()
    tensors = {}
    compared = [
        p
        for p in sorted(files_a.keys() | files_b.keys())
        if p.endswith(".safetensors") and (p in changed or p not in both)
    ]
    # The files to read, on disk (links to the blobs in the local store): a/PATH, b/PATH.
    layout = {f"a/{p}": files_a[p].sha256 for p in compared if p in files_a}
    layout |= {f"b/{p}": files_b[p].sha256 for p in compared if p in files_b}
    with registry.store.materialize(layout) as folder:
        for path in compared:
            tensors[path] = _tensor_diff(
                folder / "a" / path if path in files_a else None,
                folder / "b" / path if path in files_b else None,
            )
    return {
        "fields": fields,
        "config": _config_diff(registry, a, b),
        "files": {
            "added": sorted(files_b.keys() - files_a.keys()),
            "removed": sorted(files_a.keys() - files_b.keys()),
            "changed": changed,
        },
        "tensors": tensors,
    }


def _config(registry: Registry, card: AdapterCard) -> dict[str, Any]:
    if not any(f.path == "adapter_config.json" for f in card.files):
        return {}
    try:
        config = json.loads(registry.read_file(card, "adapter_config.json"))
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _config_diff(registry: Registry, a: AdapterCard, b: AdapterCard) -> dict[str, list[Any]]:
    ca, cb = _config(registry, a), _config(registry, b)

    def dump(value: Any) -> str:
        return json.dumps(value, sort_keys=True)

    return {
        "added": [(k, None, dump(cb[k])) for k in sorted(cb.keys() - ca.keys())],
        "removed": [(k, dump(ca[k]), None) for k in sorted(ca.keys() - cb.keys())],
        "changed": [
            (k, dump(ca[k]), dump(cb[k]))
            for k in sorted(ca.keys() & cb.keys())
            if dump(ca[k]) != dump(cb[k])
        ],
    }


def _tensor_diff(path_a: Path | None, path_b: Path | None) -> dict[str, list[Any]]:
    ta = read_safetensors_header(path_a)[0] if path_a else {}
    tb = read_safetensors_header(path_b)[0] if path_b else {}
    changed: list[tuple[str, str]] = []
    same_layout = []
    for key in sorted(ta.keys() & tb.keys()):
        x, y = ta[key], tb[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            changed.append((key, f"{x.dtype}{list(x.shape)} -> {y.dtype}{list(y.shape)}"))
        else:
            same_layout.append(key)
    if path_a and path_b and same_layout:
        budget = sum(ta[k].nbytes for k in same_layout)
        if budget > MAX_COMPARED_BYTES:
            changed += [(k, "not compared (file over 1 GiB)") for k in same_layout]
        else:
            with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
                for key in same_layout:
                    if _digest(fa, ta[key].start, ta[key].end) != _digest(
                        fb, tb[key].start, tb[key].end
                    ):
                        changed.append((key, "values"))
    return {
        "added": sorted(tb.keys() - ta.keys()),
        "removed": sorted(ta.keys() - tb.keys()),
        "changed": sorted(changed),
    }


def _digest(fh: Any, start: int, end: int) -> str:
    fh.seek(start)
    hasher = hashlib.sha256()
    remaining = end - start
    while remaining > 0:
        chunk = fh.read(min(remaining, 1 << 20))
        if not chunk:
            break
        hasher.update(chunk)
        remaining -= len(chunk)
    return hasher.hexdigest()
