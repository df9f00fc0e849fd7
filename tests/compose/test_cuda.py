"""The merge math on a CUDA device gives the CPU's results (within the float bound), with the
same random draws. CI has no GPU: these run where ``torch.cuda.is_available()``; every path
here also has CPU tests (test_merge.py, test_lowrank.py, test_compose.py)."""

from __future__ import annotations

import pytest
import torch

from compose import blockwise, merge
from compose.lowrank import TOLERANCE, truncated_svd
from compose.merge import Factors

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _lora(d, k, r, seed, device):
    g = torch.Generator().manual_seed(seed)
    return Factors(A=torch.randn(r, k, generator=g).to(device) * 0.01,
                   B=torch.randn(d, r, generator=g).to(device))  # fmt: skip


def _rel(a, b):
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm())


def test_every_dense_operator_runs_on_cuda_and_equals_the_cpu():
    cpu = [_lora(300, 200, 8, s, "cpu").delta() for s in (1, 2)]
    gpu = [d.cuda() for d in cpu]
    w = [0.7, 1.1]
    for name, call in {
        "task_arithmetic": lambda ds: merge.task_arithmetic(ds, w),
        "ties": lambda ds: merge.ties(ds, w, 0.2),
        "ties-frequency": lambda ds: merge.ties(ds, w, 0.3, "frequency"),
        "magnitude_prune": lambda ds: merge.magnitude_prune(ds, w, 0.5),
        "dare": lambda ds: merge.dare(ds, w, 0.3, torch.Generator().manual_seed(4)),
        "dare-ties": lambda ds: merge.dare(
            ds, w, 0.3, torch.Generator().manual_seed(4), variant="ties"
        ),
    }.items():
        on_gpu, on_cpu = call(gpu), call(cpu)
        assert on_gpu.device.type == "cuda", name
        assert _rel(on_gpu, on_cpu) < 1e-6, name  # same drops, same trims


def test_blockwise_ties_on_cuda_equals_the_dense_path():
    # 3000 x 6000 = 18M values: two blocks on a GPU (2796 rows, then 204), the sampled bracket.
    gpu = [_lora(3000, 6000, 16, s, "cuda") for s in (1, 2)]
    w = [1.0, 0.6]
    for call, dense in (
        (lambda fs: blockwise.ties(fs, w, 0.2), lambda ds: merge.ties(ds, w, 0.2)),
        (lambda fs: blockwise.ties(fs, w, 0.3, "frequency"),
         lambda ds: merge.ties(ds, w, 0.3, "frequency")),
        (lambda fs: blockwise.magnitude_prune(fs, w, 0.2),
         lambda ds: merge.magnitude_prune(ds, w, 0.2)),
    ):  # fmt: skip
        on_gpu = call(gpu)
        assert on_gpu.device.type == "cuda"
        # The inputs' products over the row blocks the blockwise merge forms (2796 rows,
        # then 204): the same cuBLAS calls, so the same bits whatever kernel a shape gets.
        rows = blockwise.rows_per_block(3000, 6000, on_gpu.device, None)
        deltas = [
            torch.cat([blockwise.product(Factors(A=f.A, B=f.B[s : s + rows]))
                       for s in range(0, 3000, rows)])
            for f in gpu
        ]  # fmt: skip
        assert torch.equal(on_gpu, dense(deltas))
    cpu = [merge.Factors(A=f.A.cpu(), B=f.B.cpu()) for f in gpu]
    assert _rel(blockwise.ties(gpu, w, 0.2), blockwise.ties(cpu, w, 0.2)) < 1e-6


def test_factor_and_svd_merge_on_cuda():
    a, b = _lora(2048, 1024, 16, 1, "cuda"), _lora(2048, 1024, 16, 2, "cuda")
    dense = merge.ties([a.delta(), b.delta()], [1.0, 1.0], 0.2)
    fast = merge.factor(dense, 16)
    exact = merge.factor(dense.cpu(), 16, method="exact")
    assert fast.method == "randomized" and fast.factors.A.device.type == "cuda"
    assert _rel(fast.factors.delta(), exact.factors.delta()) <= TOLERANCE
    auto = merge.factor(dense, None, energy=0.5)
    assert auto.energy >= 0.5
    low = merge.svd_merge([a, b], [0.6, 0.4], 8)
    ref = merge.svd_merge([_lora(2048, 1024, 16, 1, "cpu"), _lora(2048, 1024, 16, 2, "cpu")],
                          [0.6, 0.4], 8)  # fmt: skip
    assert _rel(low.factors.delta(), ref.factors.delta()) < 1e-5
    assert _rel(merge.cat([a, b], [1.0, 2.0]).delta(), a.delta() + 2 * b.delta()) < 1e-6


def test_randomized_on_cuda_at_70b_mlp_shape():
    a, b = _lora(28672, 8192, 16, 1, "cuda"), _lora(28672, 8192, 16, 2, "cuda")
    dense = merge.ties([a.delta(), b.delta()], [1.0, 1.0], 0.2)
    result = truncated_svd(dense, 16)
    assert result.method == "randomized" and result.estimate <= TOLERANCE
