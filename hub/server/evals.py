"""Eval records over the native API: read them with the card, post one measured elsewhere.

``GET  /api/hub/v1/adapters/{namespace}/{name}/evals?revision=REV`` -> the version's records
(read scope), oldest first, as ``hub show --json`` lists them under ``"evals"``.
``POST /api/hub/v1/adapters/{namespace}/{name}/evals`` ``{"record": {...}}`` (write scope) ->
stores a record ``hub eval --from`` measured on a client, on the exact version its ``commit``
names. Its dataset and per-example results must be uploaded first (``PUT /blobs/{sha256}``) by
the same token, or be blobs the token may already read: a digest alone proves nothing.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from hub.server.common import API, READ_ERRORS, WRITE_ERRORS, require_read, require_write, state
from schemas.api import NewEval
from schemas.errors import InvalidArgument
from schemas.inputs import check_text
from schemas.refs import validate_repo_id

router = APIRouter()


@router.get(
    f"{API}/adapters/{{namespace}}/{{name}}/evals",
    responses=READ_ERRORS,
)
def list_evals(
    request: Request, namespace: str, name: str, revision: str | None = None
) -> Response:
    """The eval records of NAMESPACE/NAME at a revision (default: the latest version)."""
    require_read(request, namespace)
    repo = validate_repo_id(f"{namespace}/{name}")
    registry = state(request).registry()
    card = registry.show(f"{repo}@{revision}" if revision else repo)
    return JSONResponse(registry.evals(card.ref))


@router.post(
    f"{API}/adapters/{{namespace}}/{{name}}/evals",
    responses=WRITE_ERRORS,
)
def post_eval(request: Request, namespace: str, name: str, body: NewEval) -> Response:
    """Store an eval record measured by `hub eval --from` on the version it names."""
    from hub.eval_store import store_record

    token = require_write(request, namespace)
    repo = validate_repo_id(f"{namespace}/{name}")
    srv = state(request)
    registry = srv.registry()
    record = body.record.model_dump(mode="json")
    check_text(" ".join([record["dataset"]["name"], *record["metrics"]]), "eval record")
    card = registry.show(f"{repo}@{record['commit']}")
    if card.commit != record["commit"]:
        raise InvalidArgument(f"eval record {record['id']}: commit {record['commit']} is not exact")
    if registry.catalog.eval_record(record["id"]) is not None:
        raise InvalidArgument(f"eval record {record['id']} exists already", status=409)
    record["ref"] = card.ref
    # Shared store lock from the blob check until the record references them: gc waits.
    with registry.store_lock(shared=True):
        for digest in (
            record["dataset"]["sha256"],
            record["results_sha256"],
            *_forgetting_blobs(record),
        ):
            if not srv.may_reference(token, digest):
                raise InvalidArgument(
                    f"blob {digest[:12]} of eval record {record['id']} is not uploaded yet"
                    " (send it with PUT /blobs/SHA256, then post again)"
                )
        store_record(registry, card, record)
    return JSONResponse(record)


def _forgetting_blobs(record: dict[str, object]) -> list[str]:
    """The blobs a ``--forgetting`` result references (its text, its per-document sums):
    held to the same proof as the record's own, since ``gc`` keeps what records reference."""
    forgetting = record.get("forgetting")
    if forgetting is None:
        return []
    dataset = forgetting.get("dataset") if isinstance(forgetting, dict) else None
    digests = [
        dataset.get("sha256") if isinstance(dataset, dict) else None,
        forgetting.get("results_sha256") if isinstance(forgetting, dict) else None,
    ]
    if not all(isinstance(d, str) and re.fullmatch("[0-9a-f]{64}", d) for d in digests):
        raise InvalidArgument(
            f"eval record {record['id']}: forgetting needs dataset.sha256 and results_sha256"
            " (64 hex digits each)"
        )
    return [str(d) for d in digests]
