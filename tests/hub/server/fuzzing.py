"""The server's two fuzzers, shared by the suite (short runs) and benchmarks/fuzz_server.py
(long runs): schemathesis over every route of the OpenAPI schema, and a seeded mutation
fuzzer of our own over the bodies that reach the deepest code, native push bodies and
Hugging Face NDJSON commits. Both only talk to a server on 127.0.0.1 and count 5xx answers.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import random
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# -- schemathesis over every route -------------------------------------------------------


@dataclass
class FuzzResult:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[tuple[str, str, int, str]] = field(default_factory=list)
    """(kind or method, path or body excerpt, status, answer excerpt) of each 5xx."""
    operations: int = 0


def fuzz_routes(
    app: Any, headers: dict[str, str], *, max_examples: int, seed: int, existing: str
) -> FuzzResult:
    """Every operation of ``app``'s OpenAPI schema, ``max_examples`` cases each (hypothesis,
    seeded), half of them aimed at the real repository ``existing`` (``ns/name``), DELETEs
    last; with ``headers`` (a token, or none)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    schemathesis.serializer.alias("application/x-ndjson", "text/plain")  # the HF commit body
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # `existing` stays until last
    namespace, name = existing.split("/")
    result = FuzzResult(operations=len(operations))
    for operation in operations:

        @hypothesis_seed(seed)
        @given(case=operation.as_strategy(), aimed=st.booleans())
        @settings(
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any, aimed: bool) -> None:
            if aimed and "namespace" in (case.path_parameters or {}):
                case.path_parameters.update(namespace=namespace, name=name)
            response = case.call(headers=headers)
            result.cases += 1
            result.statuses[response.status_code] += 1
            if response.status_code >= 500:
                result.failures.append(
                    (case.method, case.formatted_path, response.status_code, response.text[:200])
                )

        check()
    return result


# -- mutations of push bodies and NDJSON commits ---------------------------------------------

_INTERESTING: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    10**30,
    1e308,
    float("inf"),
    float("nan"),
    -0.0,
    "",
    "\udcff",
    "a\ud800b",
    "x" * 5000,
    "9" * 5000,
    "../x",
    "/etc/passwd",
    "a//b",
    ".hidden",
    "a\x00b",
    "é",
    "team/base@v1",
    "other/secret",
    "k=v",
    "acc=inf",
    "acc=1e400@d",
    [],
    {},
    [[]],
    {"a": {}},
    "0" * 64,
    "A" * 64,
]


_RECIPES: list[tuple[str, dict[str, Any]]] = [  # valid ones, for the mutations to start from
    ("cat", {}),
    ("linear", {"rank": 4}),
    ("svd", {"rank": 4}),
    ("ties", {"rank": 4, "density": 0.5}),
    ("dare", {"density": 0.5, "seed": 1, "variant": "ties"}),
    ("magnitude-prune", {"density": 0.5}),
]


def _mutate_value(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """``value`` with one random change somewhere inside it."""
    if depth > 6 or rng.random() < 0.25 or not isinstance(value, (dict, list)) or not value:
        choice = rng.random()
        if isinstance(value, str) and choice < 0.3:
            return rng.choice([value + "/x", value.split("/")[0], value * 2, value.upper()])
        return rng.choice(_INTERESTING)
    if isinstance(value, dict):
        value = dict(value)
        key = rng.choice(sorted(value))
        action = rng.random()
        if action < 0.15:
            del value[key]
        elif action < 0.25:
            value[rng.choice(["extra", key + "_", "\udcff", ""])] = rng.choice(_INTERESTING)
        else:
            value[key] = _mutate_value(value[key], rng, depth + 1)
        return value
    items = list(value)
    index = rng.randrange(len(items))
    action = rng.random()
    if action < 0.15:
        items.append(items[index])  # a duplicate (two files with one path)
    elif action < 0.25:
        del items[index]
    elif action < 0.35 and isinstance(items[index], dict) and "path" in items[index]:
        twin = dict(items[index])
        twin["path"] = f"{twin['path']}/nested"  # a file that is also a folder
        items.append(twin)
    else:
        items[index] = _mutate_value(items[index], rng, depth + 1)
    return items


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """``data`` with a few bytes flipped, cut, inserted, or (NDJSON) lines moved."""
    action = rng.random()
    if action < 0.25 and data:
        at = rng.randrange(len(data))
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
    if action < 0.45:
        return data[: rng.randrange(len(data) + 1)]
    if action < 0.6:
        at = rng.randrange(len(data) + 1)
        return data[:at] + rng.randbytes(rng.randrange(1, 16)) + data[at:]
    lines = data.split(b"\n")
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    if action < 0.75:
        lines.insert(j, lines[i])
    elif action < 0.9:
        lines[i], lines[j] = lines[j], lines[i]
    else:
        del lines[i]
    return b"\n".join(lines)


class Target:
    """A server on 127.0.0.1 with a writer token: sends the bodies, over one connection."""

    def __init__(self, url: str, token: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        assert parsed.hostname == "127.0.0.1", "the fuzzer talks to loopback servers only"
        self.host, self.port, self.token = parsed.hostname, parsed.port or 80, token
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def send(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()[:300].decode(errors="replace")
            except (http.client.HTTPException, OSError):
                self.conn.close()  # the server closed a connection it did not read to the end
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def upload(self, data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        status, text = self.send(
            "PUT", f"/api/hub/v1/blobs/{digest}", data, "application/octet-stream"
        )
        assert status == 200, text
        return {"sha256": digest, "size": len(data)}


def seed_bodies(target: Target, adapter: Path) -> tuple[dict[str, Any], bytes]:
    """A valid push body and a valid NDJSON commit of ``adapter`` (its blobs uploaded), plus
    a parent to name (``team/base``), for the mutations to start from."""
    files = sorted(p for p in adapter.iterdir() if p.is_file())
    specs = [{"path": p.name, **target.upload(p.read_bytes())} for p in files]
    status, text = target.send(
        "POST",
        "/api/hub/v1/adapters/team/base/versions",
        json.dumps({"files": specs}).encode(),
        "application/json",
    )
    assert status == 200, text
    push = {
        "files": specs,
        "tasks": ["sql"],
        "tags": {"team": "nlp"},
        "metrics": ["acc=0.5@d"],
        "parent": "team/base",
        "description": "fuzzed",
    }
    lines: list[dict[str, Any]] = [{"key": "header", "value": {"summary": "fuzz"}}]
    for path in files[:-1]:
        content = base64.b64encode(path.read_bytes()).decode()
        lines.append(
            {"key": "file", "value": {"path": path.name, "content": content, "encoding": "base64"}}
        )
    last = specs[-1]
    lines += [
        {
            "key": "lfsFile",
            "value": {"path": last["path"], "algo": "sha256", "oid": last["sha256"]},
        },
        {"key": "file", "value": {"path": "notes/a.txt", "content": "plain text"}},
        {"key": "deletedFile", "value": {"path": "old.txt"}},
        {"key": "deletedFolder", "value": {"path": "old/"}},
    ]
    commit = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    return push, commit


def fuzz_bodies(
    target: Target, adapter: Path, *, cases: int, seconds: float, seed: int
) -> dict[str, FuzzResult]:
    """Up to ``cases`` mutated push bodies, as many NDJSON commits and compose recipes (in
    turn), within ``seconds``; each result lists the 5xx answers with the body that caused
    them."""
    rng = random.Random(seed)
    push, commit = seed_bodies(target, adapter)
    kinds = ("push", "commit", "compose")
    results = {kind: FuzzResult(operations=1) for kind in kinds}
    deadline = time.monotonic() + seconds
    for number in range(len(kinds) * cases):
        if time.monotonic() > deadline:
            break
        repo = f"team/fz{rng.randrange(4)}"
        kind = kinds[number % len(kinds)]
        if kind == "compose":
            operator, params = rng.choice(_RECIPES)
            recipe: Any = {
                "operator": operator,
                "inputs": ["team/base", "team/base@v1"],
                "name": repo,
                "weights": [0.5, 0.5],
                "tasks": ["sql"],
                **params,
            }
            for _ in range(rng.randint(1, 3)):
                recipe = _mutate_value(recipe, rng)
            body = json.dumps(recipe).encode()
            path, content_type = "/api/hub/v1/compose", "application/json"
        elif kind == "push":
            mutated: Any = push
            for _ in range(rng.randint(1, 3)):
                mutated = _mutate_value(mutated, rng)
            body = json.dumps(mutated).encode()
            if rng.random() < 0.2:
                body = _mutate_bytes(body, rng)
            path, content_type = f"/api/hub/v1/adapters/{repo}/versions", "application/json"
        else:
            body = commit
            if rng.random() < 0.6:  # mutate one line's JSON, else the bytes
                lines = body.split(b"\n")
                at = rng.randrange(len(lines) - 1)
                lines[at] = json.dumps(_mutate_value(json.loads(lines[at]), rng)).encode()
                body = b"\n".join(lines)
            else:
                body = _mutate_bytes(body, rng)
            path, content_type = f"/api/models/{repo}/commit/main", "application/x-ndjson"
        status, text = target.send("POST", path, body, content_type)
        result = results[kind]
        result.cases += 1
        result.statuses[status] += 1
        if status >= 500:
            result.failures.append((kind, body[:300].decode(errors="replace"), status, text))
    return results
