"""Inference cost of one loaded model: prefill latency, decode speed and memory, measured honestly.

For each batch size and prompt length (synthetic prompts of exactly that many tokens, seeded,
no special tokens): ``warmup`` untimed generations, then ``runs`` timed ones, each generating
exactly ``new_tokens`` tokens greedily with the KV cache. One generation gives both numbers:

- **prefill**: from the call to the first logits (the forward over the whole prompt);
- **decode**: from the first logits to the last, over ``new_tokens - 1`` one-token steps;
  reported as ms per step and tokens/s (batch x steps / time).

The clock is a logits processor called once per step. On a GPU it records ``torch.cuda.Event``s
on the stream (no extra synchronisation inside the timed region; one ``synchronize`` after the
run), on a CPU it reads ``time.perf_counter``. Each latency is reported as the median, p90 and
min of the runs, with the run-to-run spread (interquartile range over the median).

Memory, measured in an extra untimed run per configuration (the profiler would slow the timed
ones): on CUDA, ``max_memory_allocated`` above what was allocated before the run; on a CPU,
the peak of the CPU allocator's running total as ``torch.profiler`` records every allocation
and free (tracemalloc does not see torch's allocator, and RSS includes the interpreter). The
model's own bytes are its unique parameter and buffer storages.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CostOptions:
    """What to run. Defaults depend on the device (``defaults``): small on a CPU so a tiny
    model measures in seconds, realistic prompt lengths on a GPU."""

    batch_sizes: tuple[int, ...] = (1, 8)
    prompt_lengths: tuple[int, ...] = (16, 64)
    new_tokens: int = 8
    warmup: int = 2
    runs: int = 10
    seed: int = 0

    def check(self) -> None:
        from schemas.errors import InvalidArgument

        if self.runs < 10:
            raise InvalidArgument(
                f"--cost-runs must be at least 10 (a median and p90 need them), got {self.runs}"
            )
        if self.warmup < 0:
            raise InvalidArgument(f"--cost-warmup must be 0 or more, got {self.warmup}")
        if self.new_tokens < 2:
            raise InvalidArgument(
                f"--cost-new-tokens must be at least 2 (one prefill, one decode step), got"
                f" {self.new_tokens}"
            )
        for name, values in (("--cost-batch-sizes", self.batch_sizes),
                             ("--cost-lengths", self.prompt_lengths)):  # fmt: skip
            if not values or any(v <= 0 for v in values):
                raise InvalidArgument(f"{name} must be positive integers, got {list(values)}")

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def defaults(device_type: str, **overrides: Any) -> CostOptions:
    """CPU: prompts of 16 and 64 tokens, 8 new; CUDA: 128 and 512 tokens, 32 new."""
    base = CostOptions() if device_type != "cuda" else CostOptions(
        prompt_lengths=(128, 512), new_tokens=32, warmup=3
    )  # fmt: skip
    given = {k: v for k, v in overrides.items() if v is not None}
    return CostOptions(**{**asdict(base), **given})


class Clock:
    """Marks on the device's timeline: CUDA events on a GPU, ``perf_counter`` on a CPU."""

    def __init__(self, device: Any) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two marks (call ``sync`` first on CUDA)."""
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0


def _step_marker(clock: Clock, marks: list[Any]) -> Any:
    from transformers import LogitsProcessor

    class StepMarker(LogitsProcessor):
        """Leaves the scores alone; marks the time each step's logits are ready."""

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            marks.append(clock.mark())
            return scores

    return StepMarker()


def synthetic_prompts(
    tokenizer: Any, vocab_size: int, batch: int, length: int, seed: int
) -> torch.Tensor:
    """``(batch, length)`` token ids drawn uniformly from the vocabulary minus special tokens."""
    import torch

    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    return allowed[torch.randint(len(allowed), (batch, length), generator=generator)]


def generate_timed(
    model: Any, ids: torch.Tensor, new_tokens: int, pad_id: int, clock: Clock
) -> tuple[float, float]:
    """One greedy generation of exactly ``new_tokens`` tokens: (prefill ms, decode ms)."""
    import torch

    marks: list[Any] = []
    mask = torch.ones_like(ids)
    with torch.no_grad():
        start = clock.mark()
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
            logits_processor=[_step_marker(clock, marks)],
        )
    clock.sync()
    if len(marks) != new_tokens:
        raise RuntimeError(f"generation ran {len(marks)} steps, expected {new_tokens}")
    return clock.ms(start, marks[0]), clock.ms(marks[0], marks[-1])


def stats(values: Sequence[float]) -> dict[str, float]:
    """Median, p90, min, max and the run-to-run spread (IQR / median) of some runs."""
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=20, method="inclusive")  # 5% steps
    q1, q3 = statistics.quantiles(ordered, n=4, method="inclusive")[0::2]
    median = statistics.median(ordered)
    return {
        "median": median,
        "p90": q[17],
        "min": ordered[0],
        "max": ordered[-1],
        "spread": (q3 - q1) / median if median > 0 else 0.0,
        "runs": len(ordered),
    }


def model_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers, each storage counted once (tied weights,
    shared buffers)."""
    seen: set[tuple[Any, int]] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


@contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """The profiler's C++ side logs start/stop lines straight to file descriptor 2 (no
    setting turns them off); send that descriptor to /dev/null meanwhile. Python exceptions
    are unaffected: they are printed after it is restored."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def activation_peak(fn: Callable[[], Any], device: Any) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated when it started."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    from torch.profiler import ProfilerActivity, profile

    with (
        _native_stderr_muted(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return int(peak)


def measure(
    model: Any,
    tokenizer: Any,
    options: CostOptions,
    *,
    device: Any,
    vocab_size: int,
    pad_id: int,
) -> list[dict[str, Any]]:
    """Latency and activation memory of ``model`` for every batch size x prompt length.

    Returns:
        One dict per configuration: ``batch``, ``prompt_tokens``, ``prefill_ms`` and
        ``decode_ms_per_step`` (``stats``), ``decode_tokens_per_s`` (from the median step),
        ``activation_peak_bytes``.
    """
    clock = Clock(device)
    out = []
    for length in options.prompt_lengths:
        for batch in options.batch_sizes:
            ids = synthetic_prompts(tokenizer, vocab_size, batch, length, options.seed).to(device)
            for _ in range(options.warmup):
                generate_timed(model, ids, options.new_tokens, pad_id, clock)
            prefill, step = [], []
            for _ in range(options.runs):
                p, d = generate_timed(model, ids, options.new_tokens, pad_id, clock)
                prefill.append(p)
                step.append(d / (options.new_tokens - 1))
            peak = activation_peak(
                partial(generate_timed, model, ids, options.new_tokens, pad_id, clock), device
            )
            step_stats = stats(step)
            out.append(
                {
                    "batch": batch,
                    "prompt_tokens": length,
                    "prefill_ms": stats(prefill),
                    "decode_ms_per_step": step_stats,
                    "decode_tokens_per_s": batch * 1000.0 / step_stats["median"]
                    if step_stats["median"] > 0
                    else None,
                    "activation_peak_bytes": peak,
                }
            )
    return out


def overhead(mode: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, float]:
    """Relative slowdown against the base, the geometric mean over configurations:
    ``prefill`` (median prefill time ratio - 1) and ``decode`` (median step time ratio - 1)."""
    import math

    def geo(key: str) -> float:
        ratios = [m[key]["median"] / b[key]["median"] for m, b in zip(mode, base, strict=True)
                  if b[key]["median"] > 0]  # fmt: skip
        if not ratios:
            return 0.0
        return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) - 1.0

    return {"prefill": geo("prefill_ms"), "decode": geo("decode_ms_per_step")}


def probe(model: Any, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, pad_id: int) -> Any:
    """fp32 logits on the probe prompts (virtual-token positions dropped) and the greedy
    continuations (``new_tokens`` each, cut at nothing: positions compared one to one)."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits = logits[:, logits.shape[1] - ids.shape[1] :].float().cpu()
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad_id,
        )
    return logits, generated[:, ids.shape[1] :].cpu()


def agreement(first: Any, second: Any, mask: torch.Tensor) -> dict[str, Any]:
    """How far two probes (``probe`` of the unmerged and the merged model) differ: the max
    absolute logit difference over real (unpadded) positions, the share of greedy tokens that
    agree position by position, and the share of whole continuations that are identical."""
    logits_a, tokens_a = first
    logits_b, tokens_b = second
    keep = mask.cpu().bool()
    diff = (logits_a - logits_b).abs()[keep]
    same = tokens_a == tokens_b
    return {
        "max_logit_diff": float(diff.max()) if diff.numel() else 0.0,
        "mean_logit_diff": float(diff.mean()) if diff.numel() else 0.0,
        "greedy_token_agreement": float(same.float().mean()),
        "greedy_sequence_agreement": float(same.all(dim=1).float().mean()),
        "probe_sequences": int(tokens_a.shape[0]),
        "probe_new_tokens": int(tokens_a.shape[1]),
    }
