"""GGML block quantization (Q8_0, Q4_0) in torch, byte for byte what ggml's reference writes.

The ``gguf`` package quantizes in numpy, single-threaded, with a handful of full-size
temporaries per tensor; merged models spend most of their GGUF export there. These do the
same float32 arithmetic (so the same bytes: the tests compare against ``gguf.quants``) on
blocks of rows that stay in cache, on every core torch uses.

Layouts (per block of 32 weights along a row):
- Q8_0: scale ``d = max|x| / 127`` as f16, then 32 int8 ``round(x / d)`` (half away from 0);
- Q4_0: ``d = x[argmax|x|] / -8`` as f16, then 16 bytes of 4-bit ``trunc(x / d + 8.5)``
  clamped to 0..15, element ``j`` in the low nibble of byte ``j`` and ``j + 16`` in the high.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK = 32
TYPE_SIZES = {"Q8_0": 2 + BLOCK, "Q4_0": 2 + BLOCK // 2}
ROWS_ELEMENTS = 1 << 18
"""Elements quantized per step (1 MiB of fp32 in, its temporaries stay in cache)."""
DEVICE_ROWS_ELEMENTS = 1 << 26
"""The same on a GPU: few large steps (a kernel launch per small step would dominate), each
bounded so its temporaries take a few hundred MiB, not a few copies of the largest tensor."""


def quantize(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The GGML bytes (``uint8``, shape ``(rows, row_bytes)``) of a 2-D fp32 ``weight``, on
    its device (the same float32 operations on a GPU: the same bytes for the same input).

    Raises:
        ValueError: ``kind`` is not Q8_0/Q4_0, or rows are not whole blocks of 32.
    """
    import torch

    if kind not in TYPE_SIZES:
        raise ValueError(f"no torch quantizer for {kind}")
    rows, width = weight.shape
    if width % BLOCK:
        raise ValueError(f"rows of {width} are not whole blocks of {BLOCK}")
    blocks_per_row = width // BLOCK
    out = torch.empty(
        (rows, blocks_per_row * TYPE_SIZES[kind]), dtype=torch.uint8, device=weight.device
    )
    elements = ROWS_ELEMENTS if weight.device.type == "cpu" else DEVICE_ROWS_ELEMENTS
    step = max(1, elements // width)
    encode = _q8_0 if kind == "Q8_0" else _q4_0
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        blocks = weight[start:stop].to(torch.float32).reshape(-1, BLOCK)
        encode(blocks, out[start:stop].view(-1, TYPE_SIZES[kind]))
    return out


def _inverse(d: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


HALF_BELOW = 0.49999997
"""The largest float32 below 0.5. ``trunc(x + copysign(HALF_BELOW, x))`` is C's ``roundf``
(halves away from zero) for every float32: at ``k + 0.5`` the sum rounds up to ``k + 1``, just
below it the sum stays below ``k + 1`` (adding 0.5 itself would round some of those up)."""


def _roundf(values: torch.Tensor) -> torch.Tensor:
    """C's ``roundf`` in three passes (the same results as gguf's numpy ``np_roundf``)."""
    import torch

    return torch.trunc(
        values.addcmul_(torch.sign(values), torch.tensor(HALF_BELOW, device=values.device))
    )


def _scale_bytes(d: torch.Tensor) -> torch.Tensor:
    import torch

    return d.to(torch.float16).view(torch.uint8).reshape(-1, 2)


def _q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    import torch

    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    out[:, :2] = _scale_bytes(d)
    out[:, 2:] = _roundf(blocks * _inverse(d)).to(torch.int8).view(torch.uint8)


def _q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    import torch

    index = blocks.abs().argmax(dim=1, keepdim=True)  # the first of equal maxima, like numpy
    d = blocks.gather(1, index) / -8
    scaled = torch.nan_to_num_(blocks * _inverse(d) + 8.5, nan=0.0, posinf=0.0, neginf=0.0)
    qs = torch.trunc(scaled).clamp_(0, 15).to(torch.uint8)  # 1/d overflows: gguf writes 0
    out[:, :2] = _scale_bytes(d)
    out[:, 2:] = qs[:, : BLOCK // 2] | (qs[:, BLOCK // 2 :] << 4)
