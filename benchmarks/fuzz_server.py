"""Long fuzz runs of the server; the suite runs the same fuzzers briefly (tests/hub/server/
test_fuzz.py). Everything talks to a server on 127.0.0.1 only.

1. schemathesis over every route of the OpenAPI schema, with a valid token and with none
   (``--examples`` cases per route and auth, seeded).
2. Our mutation fuzzer over native push bodies, Hugging Face NDJSON commits and compose
   recipes against a real server (``--cases`` of each, within ``--seconds``, seeded).

Prints one row per run: cases, answers by status class, 5xx count and wall time; exits 1 and
prints each 5xx with the input that caused it if there is any.

Usage: python benchmarks/fuzz_server.py [--examples 100] [--cases 2000] [--seconds 600]
                                        [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._util import table
from hub import Registry
from hub.server import create_app
from hub.tokens import create_token
from tests.factories import make_adapter, make_base
from tests.hub.server.fuzzing import FuzzResult, Target, fuzz_bodies, fuzz_routes
from tests.hub.server.live import start_server


def _classes(statuses: Counter[int]) -> str:
    by_class = Counter(f"{status // 100}xx" for status in statuses.elements())
    return ", ".join(f"{k} {v}" for k, v in sorted(by_class.items()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=100, help="schemathesis cases per route")
    parser.add_argument("--cases", type=int, default=2000, help="mutated bodies of each kind")
    parser.add_argument("--seconds", type=float, default=600.0, help="mutation fuzzer budget")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    work = Path(tempfile.mkdtemp(prefix="hub-fuzz-"))
    adapter = make_adapter("lora", work / "adapter", make_base(work / "base"))
    rows, failures = [], []

    for auth in ("token", "none"):
        home = work / f"routes-{auth}"
        with Registry(home) as reg:
            reg.push(adapter, name="team/sql")
            token = create_token(reg, "fuzz", read=["*"], write=["*"])
        headers = {"Authorization": f"Bearer {token}"} if auth == "token" else {}
        start = time.perf_counter()
        result = fuzz_routes(
            create_app(home),
            headers,
            max_examples=args.examples,
            seed=args.seed,
            existing="team/sql",
        )
        took = time.perf_counter() - start
        rows.append(_row(f"schemathesis, {result.operations} routes, {auth}", result, took))
        failures += result.failures

    with start_server(work / "bodies") as server:
        with Registry(server.home) as reg:
            token = create_token(reg, "fuzz", read=["team"], write=["team"])
        start = time.perf_counter()
        results = fuzz_bodies(
            Target(server.url, token),
            adapter,
            cases=args.cases,
            seconds=args.seconds,
            seed=args.seed,
        )
        took = time.perf_counter() - start
    for kind, result in results.items():
        rows.append(_row(f"mutations of {kind} bodies", result, took))
        failures += result.failures

    print(table(["run", "cases", "answers", "5xx", "wall time"], rows))
    for failure in failures:
        print("5xx:", failure)
    sys.exit(1 if failures else 0)


def _row(label: str, result: FuzzResult, took: float) -> list[object]:
    return [label, result.cases, _classes(result.statuses), len(result.failures), f"{took:.0f} s"]


if __name__ == "__main__":
    main()
