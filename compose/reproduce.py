"""Is a recomputed adapter the stored one? A numeric comparison with a bound derived from the
rounding, because equal bytes cannot be promised.

Why not bytes: BLAS and LAPACK kernels differ per CPU (AVX2 vs AVX-512 code paths), per
thread count and with MKL's reproducibility setting (``MKL_CBWR``), so the same fp32/fp64
arithmetic can end one unit in the last place apart, and a value rounded to bf16 then lands
one bf16 step apart. A fixed thread count would not help across CPUs.

What a rebuild can promise is that each stored tensor is the recomputed one up to the
rounding to the stored dtype, whose unit roundoff ``u`` is 2^-24 (fp32), 2^-11 (fp16) or
2^-8 (bf16). Rounding two nearly equal values once each puts them at most ``2u`` (relative)
apart, so for a LoRA module ``delta = B @ A``::

    |B1 A1 - B2 A2|_F <= |B1 - B2|_F |A1|_F + |B2|_F |A1 - A2|_F <= 4u |B|_F |A|_F

``BOUND_FACTOR`` doubles that for the fp64 -> fp32 -> dtype double rounding and the fp64
arithmetic. The delta is compared, not ``A`` and ``B`` one by one: the factors of an SVD are
defined only up to the signs (and rotations, for equal singular values) of the singular
vectors, which a different LAPACK path may pick differently; the delta is what the adapter
does. Every other tensor ``t`` (IA3 vectors, prompt embeddings, biases) must be within
``BOUND_FACTOR * u * |t|_F``; integer tensors, names, dtypes and shapes exactly; every file
that is not safetensors (configs, README, composite.json) byte for byte.

Where the result itself is not unique (two singular values equal at the truncation rank, two
values tied at a TIES/DARE threshold) a rebuild may legitimately land elsewhere; the check
then reports the measured difference instead of passing.
"""

from __future__ import annotations

import filecmp
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor

BOUND_FACTOR = 8.0
TOLERANCE = (
    "numeric: each LoRA module's delta B·A within 8u·|B|_F·|A|_F of the stored one, every"
    " other tensor t within 8u·|t|_F (u: unit roundoff of the stored dtype, 2^-24 fp32,"
    " 2^-11 fp16, 2^-8 bf16); other files byte for byte"
)
"""What ``hub verify --rebuild`` checks, in the words the card and the CLI use."""

_PREFIX = "base_model.model."
_PAIRS = (("lora_A.weight", "lora_B.weight"), ("lora_embedding_A", "lora_embedding_B"))

Status = Literal["identical", "within_bound", "differs", "missing", "extra"]


@dataclass
class TensorCheck:
    """One tensor (or LoRA module, as ``module (B·A)``) of a rebuilt file against the stored."""

    name: str
    error: float
    """Frobenius norm of the difference."""
    bound: float
    """The largest difference allowed."""
    norm: float
    """Frobenius norm of the stored value."""

    @property
    def ok(self) -> bool:
        return self.error <= self.bound

    @property
    def relative(self) -> float:
        if self.norm > 0:
            return self.error / self.norm
        return 0.0 if self.error == 0 else float("inf")

    @property
    def bound_fraction(self) -> float:
        """``error / bound``: 1.0 is the edge of the bound."""
        if self.bound > 0:
            return self.error / self.bound
        return 0.0 if self.error == 0 else float("inf")


@dataclass
class FileCheck:
    path: str
    status: Status
    reason: str = ""
    """Why a file differs (which tensor, or that names/dtypes/shapes/bytes differ)."""
    tensors_checked: int = 0
    """Checks made: a LoRA module's A and B count once, as their product."""
    max_relative: float = 0.0
    """Largest relative (Frobenius) difference of a tensor or module delta in this file."""
    max_bound_fraction: float = 0.0
    """Largest ``difference / bound`` in this file."""
    failures: list[dict[str, float | str]] = field(default_factory=list)
    """Each tensor beyond its bound: name, error, bound, relative."""

    @property
    def ok(self) -> bool:
        return self.status in ("identical", "within_bound")


def unit_roundoff(dtype: object) -> float:
    """Half the distance from 1.0 to the next value of ``dtype`` (0.0 for integer dtypes)."""
    import torch

    assert isinstance(dtype, torch.dtype)
    if dtype.is_floating_point:
        return float(torch.finfo(dtype).eps) / 2
    return 0.0


def delta_difference(a1: Tensor, b1: Tensor, a2: Tensor, b2: Tensor) -> float:
    """``|B1 @ A1 - B2 @ A2|_F`` in fp64, in low rank: never forms the d x k matrices.

    ``B1 A1 - B2 A2 = [B1, -B2] [A1; A2]``; with QR factorizations ``[B1, -B2] = Q1 R1`` and
    ``[A1; A2]^T = Q2 R2`` the norm is ``|R1 R2^T|_F`` (orthonormal Q's keep norms), so no
    cancellation between two large products enters the result.
    """
    import torch

    if torch.equal(a1, a2) and torch.equal(b1, b2):
        return 0.0  # exactly; the QR below would leave fp64 noise of ~1e-16 |B A|
    left = torch.cat([b1.double(), -b2.double()], dim=1)
    right = torch.cat([a1.double(), a2.double()], dim=0)
    return _product_norm(left, right)


def _product_norm(left: Tensor, right: Tensor) -> float:
    import torch

    r_left = torch.linalg.qr(left, mode="r").R
    r_right = torch.linalg.qr(right.T, mode="r").R
    return float(torch.linalg.matrix_norm(r_left @ r_right.T))


def check_tensors(stored: dict[str, Tensor], rebuilt: dict[str, Tensor]) -> list[TensorCheck]:
    """Every tensor of ``stored`` against ``rebuilt`` (same names, dtypes and shapes assumed:
    ``compare_safetensors`` checks those first). LoRA pairs are checked as one delta."""
    import torch

    checks: list[TensorCheck] = []
    paired: set[str] = set()
    for name in sorted(stored):
        for a_key, b_key in _PAIRS:
            if not name.endswith(a_key):
                continue
            partner = name[: -len(a_key)] + b_key
            if partner not in stored:
                continue
            a1, b1, a2, b2 = stored[name], stored[partner], rebuilt[name], rebuilt[partner]
            u = max(unit_roundoff(a1.dtype), unit_roundoff(b1.dtype))
            scale = float(
                torch.linalg.vector_norm(a1.double()) * torch.linalg.vector_norm(b1.double())
            )
            checks.append(
                TensorCheck(
                    f"{name[: -len(a_key)].rstrip('.').removeprefix(_PREFIX)} (B·A)",
                    delta_difference(a1, b1, a2, b2),
                    BOUND_FACTOR * u * scale,
                    _product_norm(b1.double(), a1.double()),
                )
            )
            paired |= {name, partner}
    for name in sorted(set(stored) - paired):
        one, two = stored[name].double(), rebuilt[name].double()
        norm = float(torch.linalg.vector_norm(one))
        checks.append(
            TensorCheck(
                name,
                float(torch.linalg.vector_norm(one - two)),
                BOUND_FACTOR * unit_roundoff(stored[name].dtype) * norm,
                norm,
            )
        )
    return checks


def compare_safetensors(stored: Path, rebuilt: Path, path: str) -> FileCheck:
    """A rebuilt safetensors file against the stored one: names, dtypes and shapes exactly,
    values within the rounding bound (see the module docstring)."""
    from safetensors.torch import load_file

    one, two = load_file(str(stored)), load_file(str(rebuilt))
    if set(one) != set(two):
        only = sorted(set(one) ^ set(two))
        return FileCheck(path, "differs", f"tensor names differ ({', '.join(only[:3])})")
    for name in sorted(one):
        if one[name].dtype != two[name].dtype or one[name].shape != two[name].shape:
            return FileCheck(
                path,
                "differs",
                f"tensor {name!r} is {one[name].dtype} {tuple(one[name].shape)} stored but"
                f" {two[name].dtype} {tuple(two[name].shape)} rebuilt",
            )
    checks = check_tensors(one, two)
    failures = [c for c in checks if not c.ok]
    result = FileCheck(
        path,
        "differs" if failures else "within_bound",
        tensors_checked=len(checks),
        max_relative=max((c.relative for c in checks), default=0.0),
        max_bound_fraction=max((c.bound_fraction for c in checks), default=0.0),
        failures=[
            {"name": c.name, "error": c.error, "bound": c.bound, "relative": c.relative}
            for c in failures
        ],
    )
    if failures:
        worst = max(failures, key=lambda c: c.bound_fraction)
        result.reason = (
            f"{len(failures)} of {len(checks)} tensors beyond the bound; worst {worst.name}:"
            f" relative difference {worst.relative:.2e}, bound {worst.bound / worst.norm:.2e}"
            if worst.norm > 0
            else f"{worst.name} is zero stored but not rebuilt"
        )
    return result


def compare_folders(stored: Path, rebuilt: Path) -> list[FileCheck]:
    """Every file of two adapter folders, by relative path, sorted.

    Returns:
        One ``FileCheck`` per path: ``identical`` (same bytes), ``within_bound`` (a
        safetensors file whose values agree within the rounding bound), ``differs``,
        ``missing`` (stored, not rebuilt) or ``extra`` (rebuilt, not stored).

    Example:
        >>> checks = compare_folders(stored_dir, rebuilt_dir)              # doctest: +SKIP
        >>> all(c.ok for c in checks)
        True
    """
    ours = _files(stored)
    theirs = _files(rebuilt)
    checks: list[FileCheck] = []
    for path in sorted(ours | theirs):
        if path in ours and not (stored / path).exists():
            checks.append(
                FileCheck(path, "differs", "its stored blob is missing (run `hub verify`)")
            )
        elif path not in theirs:
            checks.append(FileCheck(path, "missing", "not produced by the rebuild"))
        elif path not in ours:
            checks.append(FileCheck(path, "extra", "produced by the rebuild, not stored"))
        elif filecmp.cmp(stored / path, rebuilt / path, shallow=False):
            checks.append(FileCheck(path, "identical"))
        elif path.endswith(".safetensors"):
            checks.append(compare_safetensors(stored / path, rebuilt / path, path))
        else:
            checks.append(FileCheck(path, "differs", "bytes differ"))
    return checks


def _files(folder: Path) -> set[str]:
    # A symlink to a missing blob still names a stored file.
    return {
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()
    }
